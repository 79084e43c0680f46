/* pcopy-lane.h: the post-copy priority lane of the relay's main channel.
 *
 * In post-copy the destination runs the guest and asks for each missing
 * page it touches (REQ_PAGES on the return path).  Without help that page
 * waits behind everything queued before it: in QEMU's socket, in the
 * network, and in the relay.  The relay reads the source's main channel
 * ahead into its own queue (--queue), keeps little in the kernel (small
 * writes, TCP_NOTSENT_LOWAT) and, with --rate, nothing at the bottleneck;
 * the lane then puts each requested page at the front of that queue:
 *
 *   queue:  [being written][P2][P3][EOS][footer][PART hdr][P4] ... [P9]
 *   REQ P9: [being written][P9'][P2][P3] ...                [P4] ...
 *
 * A requested page already queued moves at once; one not yet queued (QEMU
 * sends a requested page next, on this channel unless postcopy-preempt)
 * moves when it arrives.  Only RAM page records after the PACKAGED blob
 * (post-copy proper) are indexed, and a page only goes in front of another
 * RAM page record, inside a RAM section body, where the destination reads
 * RAM records anyway.  CONTINUE ("same block as the record before") stays
 * right: the moved page always names its block, and the page that follows
 * its new place, or its old one, gets its block name written out when it
 * had CONTINUE.  A page is never sent twice (the destination fails on a
 * page placed twice) and pages of host pages larger than the target page
 * are never reordered (they must arrive together).
 */
#pragma once

#include <glib.h>
#include <json-c/json.h>
#include "mp-record.h"
#include "out-scheduler.h"
#include "stage.h"

typedef struct MpPcopyLane MpPcopyLane;

/* The read-ahead when none is given (`--queue`): it holds the guest's
 * whole RAM, as the stream's MEM_SIZE record gives it, plus its records'
 * headers (1/512 of it) and 1 MiB, so that the source's socket stays
 * empty in post-copy and a requested page reaches the relay at once; at
 * most a quarter of the memory available to the host when post-copy
 * starts (MemAvailable, /proc/meminfo) and at most
 * MP_PCOPY_QUEUE_AUTO_MAX; never less than MP_PCOPY_QUEUE_MIN (also
 * when the RAM size or the available memory is unknown).  The queue is
 * allocated as it fills, not at once, except its first
 * MP_PCOPY_QUEUE_EARLY_MAX bytes at most: once the stream has advised
 * post-copy and given the RAM size, a helper thread faults them in during
 * pre-copy, so that the read-ahead after the switch does not wait for
 * fresh memory (docs/benchmarks.md, "Readying the read-ahead early"). */
#define MP_PCOPY_QUEUE_MIN       (16u << 20)
#define MP_PCOPY_QUEUE_AUTO_MAX  (G_GUINT64_CONSTANT(8) << 30)
#define MP_PCOPY_QUEUE_EARLY_MAX (512u << 20)
/* @return the queue for a guest of `ram_total` bytes (0: unknown) on a
 * host with `mem_available` bytes available (0: unknown). */
guint64 mp_pcopy_auto_queue(guint64 ram_total, guint64 mem_available);
/* @return MemAvailable of /proc/meminfo in bytes, 0 if unknown. */
guint64 mp_pcopy_mem_available(void);

/* The lane of the main channel's queue towards the destination, `out`
 * (copied; its queue must outlive the lane, or be detached).  When
 * post-copy starts the queue may hold up to `queue` bytes, 0: mp_pcopy_auto_queue() (before, reading ahead would only hide
 * the link's rate from QEMU's bandwidth estimate).  @return a new lane;
 * free with mp_pcopy_lane_free(). */
MpPcopyLane *mp_pcopy_lane_new(const MpOutScheduler *out, gsize queue);
void mp_pcopy_lane_free(MpPcopyLane *l); /* accepts NULL */
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MpPcopyLane, mp_pcopy_lane_free)

/* `first(data)` whenever a requested page is next in the queue: moved
 * to the front, next anyway, or already on its way (being written or
 * moved for an earlier request), and when a moved page was written to
 * the kernel.  What comes after the queue (the tunnel) then takes what is
 * in front of it at once. */
void mp_pcopy_lane_on_first(MpPcopyLane *l, void (*first)(gpointer data),
                            gpointer data);

/* The lane as a stage of the main channel's pipeline towards the
 * destination (borrowed: lives as long as the lane): each record's place
 * goes to mp_pcopy_lane_record(), and mp_pcopy_lane_flush() runs once the
 * pipeline wrote a feed's output.  It never changes a record. */
MpStage *mp_pcopy_lane_stage(MpPcopyLane *l);

/* A record of the main channel towards the destination, as it will be
 * queued: at queue offset `out_off` (the pipeline's output offset: the
 * pipeline is all that queues bytes on the channel), `out_len` bytes
 * (after the stages).  Call in stream order, before
 * mp_pcopy_lane_flush(). */
void mp_pcopy_lane_record(MpPcopyLane *l, const MpRecord *rec,
                          guint64 out_off, gsize out_len);

/* The destination asked for [start, start + len) of `block` (the return
 * path's REQ_PAGES passed the relay at `now_us`). */
void mp_pcopy_lane_request(MpPcopyLane *l, const char *block, guint64 start,
                           guint64 len, gint64 now_us);

/* A moved page (the `tag` given to the scheduler) went to the kernel. */
void mp_pcopy_lane_written(MpPcopyLane *l, gpointer tag, gint64 now_us);

/* The bytes of the records given so far are queued: apply what is due
 * (pages to move, block names to write out). */
void mp_pcopy_lane_flush(MpPcopyLane *l);

/* The queue is gone: stop touching it. */
void mp_pcopy_lane_detach(MpPcopyLane *l);

/* TRUE once post-copy started on the channel. */
gboolean mp_pcopy_lane_active(const MpPcopyLane *l);
/* TRUE once the stream said it may switch to post-copy (POSTCOPY_ADVISE:
 * the source has the postcopy-ram capability). */
gboolean mp_pcopy_lane_advised(const MpPcopyLane *l);

/* @return counters as a new JSON object: queue_bytes (the read-ahead
 * bound: the one given, or the automatic one once post-copy started),
 * queue_source ("given", "auto"), ram_bytes (MEM_SIZE), mem_available
 * (auto: when post-copy started), requests, moved (from_queue,
 * on_arrival), bytes_jumped, names_written, not_moved_host_pages, and
 * latency_us {count, p50, p99, max}: from a moved page's request to its
 * last byte handed to the kernel towards the destination. */
json_object *mp_pcopy_lane_report(const MpPcopyLane *l);
