/* tcp-reasm.h: TCP reassembly of one direction of one connection, as a
 * capture shows it (RFC 9293 sequence numbers; no checksums: loopback
 * captures carry unfinished ones).
 *
 * Segments go in as the capture holds them (any order, repeated,
 * overlapping); the direction's bytes come out once each, in order, as
 * stream offsets from the first byte after the SYN.  A segment that
 * starts where the stream stands is passed on from the caller's buffer
 * without a copy; only segments ahead of a hole are copied and held.
 * Where two copies of a byte differ, the first one captured wins.
 *
 *   seq:  isn        next                   next + window
 *          |==========|....hole....[held]..[held]....|  beyond: a gap
 *          delivered   ^ delivery waits here
 *
 * Bytes that will never come are a gap, reported once with its offset
 * and size, after which delivery resumes past it; the reassembler never
 * makes bytes up.  A hole becomes a gap when
 *   - the peer acknowledges bytes past it (it got what the capture lacks:
 *     packets dropped by the capturing kernel),
 *   - holding what lies past it would take more than `window` bytes (the
 *     bound on memory: at most `window` bytes are ever held),
 *   - a segment was cut by the capture's snaplen there,
 *   - the direction ends (mp_tcp_reasm_finish()) before it was filled.
 */
#pragma once

#include <glib.h>

/* A direction's hold bound: more than Linux's largest default receive
 * window (net.ipv4.tcp_rmem max, 6 MiB; 32 MiB where tuned), since a
 * sender never has more than that in flight beyond a hole. */
#define MP_TCP_WINDOW_DEFAULT (32u << 20)

typedef enum {
    MP_TCP_GAP_ACKED,   /* the peer acknowledged bytes the capture lacks */
    MP_TCP_GAP_WINDOW,  /* more than the window would be held past it */
    MP_TCP_GAP_SNAPLEN, /* a segment was cut by the capture's snaplen */
    MP_TCP_GAP_END,     /* the direction ended before it was filled */
} MpTcpGapWhy;

/* "acknowledged by the peer but not captured", ... */
const char *mp_tcp_gap_why(MpTcpGapWhy why);

typedef struct {
    /* `len` bytes at stream offset `off` (borrowed for the call): the next
     * ones of the stream, each once. */
    void (*data)(gpointer data, guint64 off, const guint8 *buf, gsize len);
    /* Bytes [off, off + len) will never come; delivery goes on at
     * off + len.  Optional. */
    void (*gap)(gpointer data, guint64 off, guint64 len, MpTcpGapWhy why);
} MpTcpReasmOps;

typedef struct MpTcpReasm MpTcpReasm;

/* A direction whose first byte has sequence number `isn_next` (the SYN's
 * sequence number + 1).  `ops` is copied.
 * @return a new reassembler; free with mp_tcp_reasm_free(). */
MpTcpReasm *mp_tcp_reasm_new(guint32 isn_next, gsize window,
                             const MpTcpReasmOps *ops, gpointer data);
void mp_tcp_reasm_free(MpTcpReasm *r); /* accepts NULL */
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MpTcpReasm, mp_tcp_reasm_free)

/* A segment: sequence number `seq`, `wire_len` payload bytes on the wire
 * of which the first `len` were captured (borrowed for the call). */
void mp_tcp_reasm_segment(MpTcpReasm *r, guint32 seq, const guint8 *buf,
                          gsize len, gsize wire_len);

/* The FIN's sequence number: the direction's bytes end there. */
void mp_tcp_reasm_fin(MpTcpReasm *r, guint32 seq);

/* The peer acknowledged everything before `ack`. */
void mp_tcp_reasm_ack(MpTcpReasm *r, guint32 ack);

/* Gives up waiting for the hole delivery stands at: it is a gap (`why`)
 * and what is held past it is delivered (a bound on all directions'
 * held bytes was reached). */
void mp_tcp_reasm_skip(MpTcpReasm *r, MpTcpGapWhy why);

/* No more segments will come: what is still missing before the last
 * byte seen (or the FIN) is a gap; held bytes past it are delivered. */
void mp_tcp_reasm_finish(MpTcpReasm *r);

/* TRUE once every byte up to the FIN was delivered. */
gboolean mp_tcp_reasm_done(const MpTcpReasm *r);

/* Bytes delivered (the stream offset delivery stands at). */
guint64 mp_tcp_reasm_offset(const MpTcpReasm *r);
/* Bytes held past a hole now. */
gsize mp_tcp_reasm_held(const MpTcpReasm *r);

typedef struct {
    guint64 segments;      /* segments with payload */
    guint64 out_of_order;  /* segments held past a hole */
    guint64 repeated;      /* payload bytes that came before (retransmits,
                              overlaps) */
    guint64 gaps, gap_bytes;
    gsize held_max;        /* the most held at once */
} MpTcpReasmStats;

void mp_tcp_reasm_stats(const MpTcpReasm *r, MpTcpReasmStats *out);
