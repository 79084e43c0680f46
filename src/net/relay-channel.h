/* relay-channel.h: one proxied connection of the relay.
 *
 *   source --down--> [ buffer to-dst ] --up--> destination
 *   source <--down-- [ buffer to-src ] <--up-- destination
 *
 * Both sockets are non-blocking and watched by one GSource on the glib
 * main loop.  Each direction has its own bounded buffer: when the writer
 * is behind (the buffer holds MP_RELAY_BUFFER bytes) the channel stops
 * reading that direction, which pushes back through TCP to the sender;
 * nothing ever waits on another channel or direction, so multifd
 * synchronisation (the destination holding the main channel until every
 * multifd channel delivers its SYNC) cannot deadlock in the relay.
 *
 * A FIN is passed on as a FIN (shutdown(SHUT_WR) once the buffer is
 * written), so the return path keeps flowing after the source finished
 * sending; a reset or a write error aborts the whole connection, closing
 * both sockets.  The channel reports every chunk it reads through the
 * `data` hook before forwarding it verbatim; a filtered direction forwards
 * only what the hook sends (relay.c feeds the channel's pipeline there).
 */
#pragma once

#include <gio/gio.h>
#include "channel-types.h"
#include "out-scheduler.h"
#include "rate-pacer.h"

#define MP_RELAY_BUFFER (1u << 20) /* per direction */

typedef struct MpRelayChannel MpRelayChannel;

typedef struct {
    /* `len` bytes read in `dir`, about to be forwarded (borrowed). */
    void (*data)(MpRelayChannel *ch, MpDir dir, const guint8 *buf, gsize len,
                 gpointer user_data);
    /* `dir` ended: MP_END_FIN (the sender closed and all was forwarded),
     * MP_END_RESET (the sender's connection broke) or MP_END_ABORTED (the
     * connection was torn down: the other side broke, or the relay). */
    void (*end)(MpRelayChannel *ch, MpDir dir, MpEndReason how,
                gpointer user_data);
    /* Both directions ended and both sockets are closed.  The hook may
     * free the channel. */
    void (*closed)(MpRelayChannel *ch, gpointer user_data);
    /* mp_relay_channel_connect() finished: `error` NULL on success. */
    void (*connected)(MpRelayChannel *ch, const GError *error,
                      gpointer user_data);
    /* mp_relay_channel_watch(): the source's side is readable (or hung
     * up): peek at it. */
    void (*readable)(MpRelayChannel *ch, gpointer user_data);
    /* The last byte of an edit made with a `tag` went to the kernel. */
    void (*edit_written)(MpRelayChannel *ch, MpDir dir, gpointer tag,
                         gpointer user_data);
} MpRelayChannelHooks;

/* A channel for the accepted socket `down` (takes a reference).  It does
 * nothing until mp_relay_channel_watch() or mp_relay_channel_start().
 * @hooks: copied.  @return a new channel; free with mp_relay_channel_free().
 */
MpRelayChannel *mp_relay_channel_new(GSocket *down, guint64 id,
                                     const MpRelayChannelHooks *hooks,
                                     gpointer user_data);
/* Closes both sockets at once (no hooks are called).  Accepts NULL. */
void mp_relay_channel_free(MpRelayChannel *ch);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MpRelayChannel, mp_relay_channel_free)

/* Watches the source's side for readability without reading (for
 * connections whose first bytes decide what to do with them); TRUE:
 * watch, FALSE: stop. */
void mp_relay_channel_watch(MpRelayChannel *ch, gboolean on);

/* Looks at the first bytes without consuming them.
 * @return bytes copied, 0 if the source closed, -1 with @error set
 * (G_IO_ERROR_WOULD_BLOCK: nothing yet). */
gssize mp_relay_channel_peek(MpRelayChannel *ch, guint8 *buf, gsize len,
                             GError **error);

/* TRUE if the source has closed its side (TCP CLOSE_WAIT): a peek cannot
 * tell a FIN after a few bytes from bytes still to come. */
gboolean mp_relay_channel_source_closed(MpRelayChannel *ch);

/* Starts relaying: reads the source's side (into the to-dst buffer until
 * the destination is connected) and, once connected, both directions. */
void mp_relay_channel_start(MpRelayChannel *ch);

/* Connects to the destination at `to` (non-blocking; `timeout_ms` 0:
 * none); the `connected` hook tells the result.  `sndbuf`: the socket's
 * SO_SNDBUF in bytes (the kernel doubles it), 0: the kernel's autotuning. */
void mp_relay_channel_connect(MpRelayChannel *ch, GSocketAddress *to,
                              guint timeout_ms, guint sndbuf);

/* Tears the connection down now: both sockets are closed; the `end` hook
 * runs for each direction not ended yet ("aborted"), then `closed`. */
void mp_relay_channel_abort(MpRelayChannel *ch);

guint64 mp_relay_channel_id(const MpRelayChannel *ch);
/* "127.0.0.1:40312" (borrowed). */
const char *mp_relay_channel_peer(const MpRelayChannel *ch);
/* Bytes read in `dir` so far. */
guint64 mp_relay_channel_bytes(const MpRelayChannel *ch, MpDir dir);
/* Bytes queued to be written in `dir` so far. */
guint64 mp_relay_channel_bytes_sent(const MpRelayChannel *ch, MpDir dir);

/* From now on what is read in `dir` goes to the `data` hook only, and
 * what the hook (or the `end` hook, before the FIN is passed on) gives to
 * mp_relay_channel_send() is written.  Call before mp_relay_channel_start().
 * The buffer bound still holds for reading: the channel stops reading while
 * MP_RELAY_BUFFER bytes wait to be written.
 *
 * The bytes are read into the write queue itself, `gap` bytes past its end
 * (mp_relay_channel_set_read_gap()), so that the hook's bytes that came
 * from them are queued without a copy.  The hook must then keep to this:
 * up to any byte of what was read, it sends no more than `gap` bytes plus
 * the bytes read before that one, and it sends those bytes in order; what
 * would run further ahead goes to mp_relay_channel_queue_append(). */
void mp_relay_channel_set_filtered(MpRelayChannel *ch, MpDir dir);
/* Filtered `dir`: the most the `data` hook will send, from now on, ahead
 * of the bytes of the next read (bytes it holds back from earlier reads).
 * 0 at first. */
void mp_relay_channel_set_read_gap(MpRelayChannel *ch, MpDir dir, gsize gap);
/* Queues `len` bytes to be written in `dir`: copied, unless they are bytes
 * the `data` hook was given (then they stay where they are). */
void mp_relay_channel_send(MpRelayChannel *ch, MpDir dir, const guint8 *buf,
                           gsize len);
/* Filtered `dir`: stop reading while `bytes` wait to be written (instead
 * of MP_RELAY_BUFFER): the relay's own queue. */
void mp_relay_channel_set_limit(MpRelayChannel *ch, MpDir dir, gsize bytes);
/* Filtered `dir`: its limit will be raised to about `bytes`; from the next
 * loop turn a helper thread faults that much of the queue's memory in
 * (big-buf.h), without reading further.  Fresh memory is slow to fault
 * in, and after the switch to post-copy the loop thread must not wait for
 * it.  Below 32 MiB nothing happens. */
void mp_relay_channel_prepare_limit(MpRelayChannel *ch, MpDir dir,
                                    gsize bytes);
/* Writes in `dir` take tokens from `pacer` (borrowed; NULL: none). */
void mp_relay_channel_set_pacer(MpRelayChannel *ch, MpDir dir,
                                MpRatePacer *pacer);
/* At most `bytes` per write and TCP_NOTSENT_LOWAT `bytes` on the socket
 * `dir` writes to (connected): little waits in the kernel.  @return FALSE
 * with @error set if the socket option could not be set (the write cap
 * holds anyway, but the kernel's queue is then as deep as its buffer).
 * Towards a Unix socket (migproxy source's hop) a read of `dir` also
 * takes at most 128 KiB, so that the reader in the same main loop gets
 * its turns while a large queue fills. */
gboolean mp_relay_channel_set_low_latency(MpRelayChannel *ch, MpDir dir,
                                          gsize bytes, GError **error);

/* The queue of `dir` in absolute offsets: bytes [written, sent) wait to be
 * written, where sent = mp_relay_channel_bytes_sent(). */
guint64 mp_relay_channel_bytes_written(const MpRelayChannel *ch, MpDir dir);
/* Bytes the queue moved within its buffer to make room (its cost: at
 * most 4 per byte written out, however deep the queue). */
guint64 mp_relay_channel_bytes_moved(const MpRelayChannel *ch, MpDir dir);
/* @return the queued bytes [at, at + len) (valid until the next change of
 * the queue), or NULL if they are not all queued. */
const guint8 *mp_relay_channel_queue_peek(MpRelayChannel *ch, MpDir dir,
                                          guint64 at, gsize len);
/* At queue offset `at`, `len` bytes (copied) go out instead of the
 * `remove` queued bytes there (remove 0: an insertion).  Queue offsets do
 * not change.  Several insertions at one offset go out in the order they
 * were made, before the one edit that may replace bytes there.  @return
 * FALSE (nothing changed) if the bytes are not all still queued, an edit
 * already replaces bytes at `at`, or the writer has begun an edit there. */
gboolean mp_relay_channel_queue_edit(MpRelayChannel *ch, MpDir dir,
                                     guint64 at, gsize remove,
                                     const guint8 *bytes, gsize len);
/* The same; when its last byte is written, the `edit_written` hook gets
 * `tag` (not NULL). */
gboolean mp_relay_channel_queue_edit_tagged(MpRelayChannel *ch, MpDir dir,
                                            guint64 at, gsize remove,
                                            const guint8 *bytes, gsize len,
                                            gpointer tag);
/* Queues `len` bytes (copied) to go out after everything queued so far,
 * beside the queue's buffer: they take no queue offset (a filtered
 * direction's output that outgrew what was read, see
 * mp_relay_channel_set_filtered()).  Any time, also inside the `data`
 * hook. */
void mp_relay_channel_queue_append(MpRelayChannel *ch, MpDir dir,
                                   const guint8 *bytes, gsize len);
/* Drops the edit that replaces bytes at `at`, if the writer has not begun
 * it.  @return TRUE if there was one. */
gboolean mp_relay_channel_queue_unedit(MpRelayChannel *ch, MpDir dir,
                                       guint64 at);
/* For the path's rate (rate-pacer.h, MpRateEstimator): @return the bytes
 * of `dir` the path took (acknowledged by the receiver) since the last
 * call; *saturated: the path held the channel back all that time (bytes
 * waited in its queue throughout, and the kernel's send buffer was full
 * at least once or holds unsent bytes now) and the receiver did not (its
 * window limited the kernel for at most a tenth of the time).  0 and
 * FALSE while not connected. */
guint64 mp_relay_channel_drain_sample(MpRelayChannel *ch, MpDir dir,
                                      gboolean *saturated);
/* TRUE once `dir` has ended. */
gboolean mp_relay_channel_ended(const MpRelayChannel *ch, MpDir dir);

/* The write queue towards the destination as an output scheduler
 * (out-scheduler.h) for the stages of the pipeline that writes it; a
 * moved record's tag comes back through the `edit_written` hook.  Valid
 * as long as the channel. */
MpOutScheduler mp_relay_channel_scheduler(MpRelayChannel *ch);
