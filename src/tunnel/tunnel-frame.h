/* tunnel-frame.h: the frames of migproxy's own tunnel between
 * `migproxy source` and `migproxy dest` (docs/tunnel.md is the spec).
 *
 * A tunnel connection carries, in each direction:
 *
 *   preamble  "\x8bMPTUN\r\n"                          8 bytes, once
 *   frame     header | payload | trailer               any number
 *
 *    0      1      2      3      4      5      6      7
 *   +------+------+------+------+------+------+------+------+
 *   | type | flags| stream (be16)|   payload length (be32)   |
 *   +------+------+------+------+------+------+------+------+
 *   |                   seq (be64)                          |
 *   +------+------+------+------+------+------+------+------+
 *   |   header check (be32)     |  payload ... length bytes
 *   +------+------+------+------+------ ...
 *   |   payload check (be64) ...                            |
 *
 *   header check  = low 32 bits of XXH3-64 of header bytes 0..15
 *   payload check = XXH3-64 of the payload, seeded with the header check
 *
 * The header check lets a receiver refuse a corrupt length before it waits
 * for (and buffers) that many bytes; the payload check covers the rest.
 * Payloads longer than the negotiated maximum are refused before any of
 * their bytes are buffered, so a peer can make the parser hold at most
 * max_payload + 28 bytes.
 */
#pragma once

#include <glib.h>
#include "parse-common.h"

#define MP_TUN_PREAMBLE     "\x8bMPTUN\r\n"
#define MP_TUN_PREAMBLE_LEN 8
#define MP_TUN_HEADER_LEN   20
#define MP_TUN_TRAILER_LEN  8
#define MP_TUN_MAGIC        0x4d50544eu /* "MPTN", in HELLO */
#define MP_TUN_VERSION      1u

/* Payload bounds: until the handshake is done the peer is a stranger and
 * gets MP_TUN_MAX_PAYLOAD_HELLO; afterwards the negotiated maximum, never
 * above MP_TUN_MAX_PAYLOAD_LIMIT (a 4 MiB multifd packet's worth plus
 * room for batch headers). */
#define MP_TUN_MAX_PAYLOAD_HELLO   4096u
#define MP_TUN_MAX_PAYLOAD_DEFAULT (1024u * 1024)
#define MP_TUN_MAX_PAYLOAD_LIMIT   (8u * 1024 * 1024)

/* Stream 0 is the tunnel's own control stream.  Streams a side opens get
 * ids of its parity: the source side odd, the destination side even. */
#define MP_TUN_STREAM_CONTROL 0

typedef enum {
    MP_TUN_HELLO = 0x01, /* handshake, first frame each way, stream 0 */
    MP_TUN_OPEN = 0x02,  /* a new logical stream */
    MP_TUN_DATA = 0x03,  /* raw stream bytes (COMPRESSED: zstd) */
    MP_TUN_PAGES = 0x04, /* a batch of encoded pages of one RAM block */
    MP_TUN_ACK = 0x05,   /* what the sender holds, per stream and lane */
    MP_TUN_CLOSE = 0x06, /* one stream ends (cleanly or not) */
    MP_TUN_PING = 0x07,
    MP_TUN_PONG = 0x08,
    MP_TUN_END = 0x09, /* the tunnel ends; nothing follows */
    MP_TUN__MAX,
} MpTunFrameType;

/* flags */
#define MP_TUN_FLAG_URGENT     0x01 /* urgent lane (else bulk) */
#define MP_TUN_FLAG_COMPRESSED 0x02 /* DATA/PAGES: body is zstd (stream's
                                       long-window context, flushed) */
#define MP_TUN_FLAGS_KNOWN     0x03

/* Frames that carry stream content have a per-(stream, lane) sequence
 * number, 1 for the first; the others have seq 0. */
static inline gboolean
mp_tun_type_sequenced(guint8 type)
{
    return type == MP_TUN_DATA || type == MP_TUN_PAGES
           || type == MP_TUN_CLOSE;
}

/* HELLO feature bits (what an encoder or a lane needs from both sides) */
#define MP_TUN_FEAT_ZERO_RUNS  0x0001
#define MP_TUN_FEAT_ZSTD_PAGES 0x0002
#define MP_TUN_FEAT_DELTA      0x0004
#define MP_TUN_FEAT_DEDUP      0x0008
#define MP_TUN_FEAT_RAW_ZSTD   0x0010
#define MP_TUN_FEAT_ZERO_HELD  0x0020 /* peer-holds-zero tracking */
#define MP_TUN_FEAT_RESUME     0x0040 /* keeps frames until acked */
/* requested post-copy pages lifted into the urgent lane (docs/tunnel.md,
 * "Lifted pages") */
#define MP_TUN_FEAT_URGENT_PAGES 0x0080
/* OPEN may carry a route (the 12-byte OPEN: several migrations to
 * several destination QEMUs, docs/tunnel.md "Streams"); without it every
 * OPEN is the 10-byte one, route 0 */
#define MP_TUN_FEAT_ROUTES     0x0100
/* PAGES on multifd streams: the pages of QEMU's uncompressed multifd
 * packets, written back by dest as the packet's page bytes
 * (docs/tunnel.md, "Multifd pages") */
#define MP_TUN_FEAT_MFD_PAGES  0x0200
/* the window per stream grows with the rate the peer acknowledges, up to
 * MP_TUN_MUX_WINDOW_MAX; the receiver takes twice that (without it: twice
 * MP_TUN_MUX_WINDOW, tunnel-mux.h) */
#define MP_TUN_FEAT_WIDE_WINDOW 0x0400
#define MP_TUN_FEATS_KNOWN     0x07ff

typedef enum {
    MP_TUN_ROLE_SOURCE = 1, /* next to the source QEMU */
    MP_TUN_ROLE_DEST = 2,
} MpTunRole;

typedef enum {
    MP_TUN_TLS_NONE = 0,     /* plain TCP: the sender expects no TLS */
    MP_TUN_TLS_REQUIRED = 1, /* the sender runs TLS and wants it */
} MpTunTls;

typedef struct {
    guint16 version_min, version_max;
    guint8 role;     /* MpTunRole */
    guint8 tls;      /* MpTunTls */
    guint32 features; /* MP_TUN_FEAT_* offered */
    guint32 page_size;
    guint64 cache_bytes; /* page-cache budget proposed */
    guint32 max_payload;
    guint64 tunnel_id; /* 0: a new tunnel; else the one to resume */
    const char *software; /* NUL-terminated copy owned by the parser */
} MpTunHello;

/* The QEMU channel a stream carries (one direction of one QEMU
 * connection). */
typedef enum {
    MP_TUN_CH_UNKNOWN = 0, /* not recognised: raw bytes only */
    MP_TUN_CH_MAIN = 1,
    MP_TUN_CH_RETURN_PATH = 2, /* reverse direction of a MAIN connection */
    MP_TUN_CH_MULTIFD = 3,
    MP_TUN_CH_PREEMPT = 4,
    MP_TUN_CH_RECOVERY = 5, /* main connection after migrate-recover */
    MP_TUN_CH__MAX,
} MpTunChannel;

/* Routes a side serves (`migproxy source --listen`, `migproxy dest --to`,
 * each repeatable): a bound on listeners and dial queues, not on the
 * wire's u16. */
#define MP_TUN_ROUTES_MAX 64

typedef struct {
    guint32 session;    /* one QEMU migration */
    guint16 connection; /* QEMU connection within the session */
    guint8 channel;     /* MpTunChannel */
    guint8 index;       /* multifd channel number */
    guint16 reverse_of; /* RETURN_PATH: stream id of its MAIN, else 0 */
    guint16 route;      /* the source side's --listen it came to, from 0:
                           dest's --to of the same rank (0: not on the
                           wire, the 10-byte OPEN) */
} MpTunOpen;

typedef enum {
    MP_TUN_CLOSE_EOF = 0,   /* QEMU closed its side: flush and shut down */
    MP_TUN_CLOSE_ABORT = 1, /* error: reset the QEMU connection */
} MpTunCloseHow;

typedef struct {
    guint8 how; /* MpTunCloseHow */
    const char *reason; /* NUL-terminated, parser-owned */
} MpTunClose;

typedef struct {
    guint16 stream;
    guint64 bulk_seq;   /* every bulk frame up to this one is held */
    guint64 urgent_seq; /* same for the urgent lane */
} MpTunAckEntry;

typedef struct {
    guint64 token;
    guint64 time_ns; /* sender's monotonic clock (PING); echoed (PONG) */
} MpTunPing;

typedef enum {
    MP_TUN_END_DONE = 0,     /* every stream closed cleanly */
    MP_TUN_END_REFUSED = 1,  /* handshake refused (reason says why) */
    MP_TUN_END_ERROR = 2,    /* a fatal error (reason) */
    MP_TUN_END_SHUTDOWN = 3, /* the operator stops the tunnel */
} MpTunEndCode;

typedef struct {
    guint8 code; /* MpTunEndCode */
    const char *reason;
} MpTunEnd;

/* One frame as the parser hands it to its callback. */
typedef struct {
    guint8 type; /* MpTunFrameType */
    guint8 flags;
    guint16 stream;
    guint64 seq;
    guint64 offset; /* tunnel offset of the frame's first header byte */
    guint32 len;
    const guint8 *payload; /* len bytes */
    union {
        MpTunHello hello;
        MpTunOpen open;
        MpTunClose close;
        struct {
            guint32 count;
            const guint8 *entries; /* use mp_tun_ack_entry() */
        } ack;
        MpTunPing ping;
        MpTunEnd end;
        struct {
            guint32 raw_len; /* COMPRESSED: decompressed length */
            const guint8 *body;
            guint32 body_len;
        } data;
    } u;
} MpTunFrame;

/* Lifetime as for MpRecord: the frame, its payload and its strings are
 * valid only during the call.  Return MP_REC_PAUSE to stop the feed. */
typedef MpRecordAction (*MpTunFrameFunc)(const MpTunFrame *f,
                                         gpointer user_data);

const char *mp_tun_frame_type_name(guint8 type);
const char *mp_tun_channel_name(guint8 channel);

/* @return entry i (< f->u.ack.count) of an ACK frame. */
MpTunAckEntry mp_tun_ack_entry(const MpTunFrame *f, guint32 i);

/* --- parser ---------------------------------------------------------- */

typedef struct MpTunParser MpTunParser;

/* `channel` names the connection in errors ("tunnel from 10.0.0.2:4444").
 * The parser expects the preamble, then a HELLO, then any frames; payloads
 * are bounded by MP_TUN_MAX_PAYLOAD_HELLO until the caller raises the
 * bound with mp_tun_parser_set_max_payload() (after the handshake).
 * @return a parser; free with mp_tun_parser_free(). */
MpTunParser *mp_tun_parser_new(const char *channel, MpTunFrameFunc cb,
                               gpointer user_data);
/* Accepts NULL. */
void mp_tun_parser_free(MpTunParser *p);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MpTunParser, mp_tun_parser_free)

/* Raises or lowers the payload bound (clamped to
 * MP_TUN_MAX_PAYLOAD_LIMIT); applies to frames whose header is read
 * afterwards. */
void mp_tun_parser_set_max_payload(MpTunParser *p, guint32 max_payload);

/* Feeds `len` bytes (caller keeps ownership).
 * @return MP_FEED_MORE (all used), MP_FEED_PAUSED (callback paused; resume
 * at buf + *consumed), MP_FEED_END (an END frame was delivered; bytes after
 * *consumed are not ours), MP_FEED_ERROR with `error` (sticky). */
MpFeedStatus mp_tun_parser_feed(MpTunParser *p, const guint8 *buf, gsize len,
                                gsize *consumed, GError **error);

/* The input ended.  @return TRUE after an END frame; FALSE with
 * MP_PARSE_ERROR_TRUNCATED naming what was being read otherwise (a tunnel
 * that drops without END is not a clean end). */
gboolean mp_tun_parser_finish(MpTunParser *p, GError **error);

/* @return bytes consumed so far. */
guint64 mp_tun_parser_offset(const MpTunParser *p);

/* --- writer ---------------------------------------------------------- */

/* Each appends one whole frame (header, payload, trailer) to `out`. */
void mp_tun_write_preamble(GByteArray *out);
void mp_tun_write_frame(GByteArray *out, guint8 type, guint8 flags,
                        guint16 stream, guint64 seq, const guint8 *payload,
                        guint32 len);
void mp_tun_write_hello(GByteArray *out, const MpTunHello *h);
void mp_tun_write_open(GByteArray *out, guint16 stream, const MpTunOpen *o);
/* DATA: `raw_len` is the decompressed length when COMPRESSED is in flags
 * (ignored otherwise). */
void mp_tun_write_data(GByteArray *out, guint8 flags, guint16 stream,
                       guint64 seq, guint32 raw_len, const guint8 *body,
                       guint32 body_len);
void mp_tun_write_ack(GByteArray *out, const MpTunAckEntry *entries,
                      guint32 count);
void mp_tun_write_close(GByteArray *out, guint8 flags, guint16 stream,
                        guint64 seq, guint8 how, const char *reason);
void mp_tun_write_ping(GByteArray *out, guint8 type, guint64 token,
                       guint64 time_ns);
void mp_tun_write_end(GByteArray *out, guint8 code, const char *reason);

/* --- handshake ------------------------------------------------------- */

/* What both sides run with, computed alike on both from the two HELLOs. */
typedef struct {
    guint16 version;
    guint32 features;
    guint32 page_size;
    guint64 cache_bytes;
    guint32 max_payload;
    gboolean tls;
    /* the source side's HELLO tunnel_id: the tunnel's name for a resume
     * (0: not resumable) */
    guint64 tunnel_id;
    /* both HELLOs name the same tunnel (not 0) and both offered RESUME:
     * this connection resumes it (docs/tunnel.md, "Acknowledgements and
     * resume") */
    gboolean resumed;
} MpTunAgreed;

/* @return TRUE with *agreed filled, or FALSE with an error saying why the
 * two cannot talk (no common version, page sizes differ, TLS expected by
 * one side only, two sides of the same role). */
gboolean mp_tun_negotiate(const MpTunHello *mine, const MpTunHello *theirs,
                          MpTunAgreed *agreed, GError **error);
