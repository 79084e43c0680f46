/* tunnel-seq.h: sequence numbers, acknowledgements and the frames kept
 * for a resume (docs/tunnel.md, "Acknowledgements and resume").
 *
 * One MpTunSeq per tunnel side holds, for every (stream, lane):
 *   - sending: the next seq to give a frame, and a copy of every frame
 *     sent and not yet acknowledged (in seq order), up to a byte limit;
 *   - receiving: the highest seq held, so a frame is new (seq = held + 1),
 *     a duplicate after a resume (seq <= held: drop it), or a gap (an
 *     error: frames are never lost inside one connection, and a resume
 *     resends from the acknowledged seq on).
 * Acknowledgements are cumulative; mp_tun_seq_ack_entries() gives what to
 * put in an ACK frame, mp_tun_seq_acked() applies one received.
 *
 * Memory: kept frames are bounded by `keep_limit` bytes; when the limit
 * is reached, mp_tun_seq_keep() refuses and the caller stops reading from
 * QEMU until ACKs free room (back-pressure, as the relay's bounded
 * queues).  Streams are bounded by MP_TUN_SEQ_MAX_STREAMS.
 * Not thread-safe: it belongs to the tunnel connection's thread.
 */
#pragma once

#include <glib.h>
#include "tunnel-frame.h"

#define MP_TUN_SEQ_MAX_STREAMS 1024

typedef struct MpTunSeq MpTunSeq;

/* @return free with mp_tun_seq_free(). */
MpTunSeq *mp_tun_seq_new(gsize keep_limit);
void mp_tun_seq_free(MpTunSeq *s); /* accepts NULL */
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MpTunSeq, mp_tun_seq_free)

/* --- sending ---------------------------------------------------------- */

/* @return the seq for the next frame of (stream, lane), 1 for the first;
 * 0 when MP_TUN_SEQ_MAX_STREAMS streams are known and this is another. */
guint64 mp_tun_seq_next(MpTunSeq *s, guint16 stream, gboolean urgent);

/* Keeps a copy of a whole frame (as written) with that seq until it is
 * acknowledged.  @return FALSE (nothing kept) when it would exceed the
 * byte limit: stop producing frames until mp_tun_seq_acked() frees room. */
gboolean mp_tun_seq_keep(MpTunSeq *s, guint16 stream, gboolean urgent,
                         guint64 seq, const guint8 *frame, gsize len);

/* An ACK entry from the peer: frames up to its seqs are freed.
 * @return FALSE with an error if it acknowledges a seq not yet sent (a
 * peer that lies or a mixed-up resume). */
gboolean mp_tun_seq_acked(MpTunSeq *s, const MpTunAckEntry *e,
                          GError **error);

/* Bytes of frames kept. */
gsize mp_tun_seq_kept_bytes(const MpTunSeq *s);

/* After a reconnect: calls `fn` for every kept frame, stream by stream in
 * the order they were opened, urgent lane first, in seq order. */
void mp_tun_seq_foreach_kept(const MpTunSeq *s,
                             void (*fn)(const guint8 *frame, gsize len,
                                        gpointer user_data),
                             gpointer user_data);

/* --- receiving -------------------------------------------------------- */

typedef enum {
    MP_TUN_SEQ_NEW,       /* the next one: apply it */
    MP_TUN_SEQ_DUPLICATE, /* held already (a resend): drop it */
    MP_TUN_SEQ_GAP,       /* frames missing before it: an error */
} MpTunSeqVerdict;

/* Records a sequenced frame received.  @return the verdict; with GAP (or
 * too many streams) `error` names stream, lane, seq and what was
 * expected. */
MpTunSeqVerdict mp_tun_seq_receive(MpTunSeq *s, guint16 stream,
                                   gboolean urgent, guint64 seq,
                                   GError **error);

/* Fills up to `max` entries with what this side holds, stream by stream
 * in the order they were first seen.  @return the number filled. */
guint32 mp_tun_seq_ack_entries(const MpTunSeq *s, MpTunAckEntry *out,
                               guint32 max);
