/* pcap-flows.h: the TCP connections of a packet capture (pcap or pcapng,
 * read through libpcap), each direction reassembled (tcp-reasm.h) and
 * handed on in capture order with its packets' timestamps.
 *
 * Link types: Ethernet (with up to two VLAN tags), Linux cooked (SLL
 * and SLL2, `tcpdump -i any`), BSD loopback/null, raw IPv4/IPv6.
 * Network: IPv4 and IPv6 (extension headers skipped; fragments are not
 * reassembled: their bytes become gaps).  Checksums are not checked
 * (loopback captures carry unfinished ones).
 *
 * A connection is known from its SYN: the side that sent it is the
 * client (for a migration, the source QEMU), its direction is
 * MP_DIR_TO_DST.  Connections whose SYN the capture lacks (opened before
 * it started) are counted and skipped: their first bytes are missing.
 *
 * Bounds: at most `window` bytes held per direction past a hole
 * (MP_TCP_WINDOW_DEFAULT), at most MP_PCAP_HELD_MAX in all directions
 * together (past that, the hole of the direction that grew is a gap), at
 * most MP_PCAP_MAX_CONNS connections tracked (later ones are counted and
 * skipped); a closed connection keeps only its ~300-byte entry.
 */
#pragma once

#include <glib.h>
#include <json-c/json.h>
#include "channel-types.h"
#include "tcp-reasm.h"

#define MP_PCAP_HELD_MAX  (256u << 20)
#define MP_PCAP_MAX_CONNS 100000u

/* One TCP connection of the capture. */
typedef struct {
    guint index;        /* 0, 1, ... in the order of their SYNs */
    const char *client; /* "127.0.0.1:51234", "[::1]:51234" */
    const char *server; /* "127.0.0.1:4444" */
    gint64 open_us;     /* the SYN's timestamp (µs since the epoch) */
} MpPcapConn;

/* What the reader tells, in capture order; `c` is borrowed for the call,
 * times are the packets' (µs since the epoch).  Every member optional. */
typedef struct {
    void (*open)(gpointer data, const MpPcapConn *c);
    /* The next `len` bytes of `dir`, at stream offset `off`. */
    void (*data)(gpointer data, const MpPcapConn *c, MpDir dir, guint64 off,
                 const guint8 *buf, gsize len, gint64 now_us);
    /* Bytes [off, off + len) of `dir` are not in the capture. */
    void (*gap)(gpointer data, const MpPcapConn *c, MpDir dir, guint64 off,
                guint64 len, MpTcpGapWhy why, gint64 now_us);
    /* `dir` ended: MP_END_FIN (all its bytes came), MP_END_RESET (its
     * sender reset), MP_END_ABORTED (the other side reset),
     * MP_END_MISSING (the capture ends before it did).  Once per
     * direction, after its last data. */
    void (*end)(gpointer data, const MpPcapConn *c, MpDir dir, MpEndReason how,
                gint64 now_us);
} MpPcapOps;

/* One packet's TCP segment, decoded (mp_pcap_decode()). */
typedef struct {
    int family;            /* 4 or 6 */
    guint8 src[16], dst[16];
    guint16 sport, dport;
    guint32 seq, ack;
    guint8 flags;          /* MP_TCP_F* */
    const guint8 *payload; /* into the packet */
    gsize cap_len;         /* payload bytes captured */
    gsize wire_len;        /* payload bytes on the wire */
} MpPcapSegment;

#define MP_TCP_FFIN 0x01
#define MP_TCP_FSYN 0x02
#define MP_TCP_FRST 0x04
#define MP_TCP_FACK 0x10

typedef enum {
    MP_PCAP_TCP,         /* a TCP segment: *seg is set */
    MP_PCAP_OTHER,       /* not TCP over IP (ARP, UDP, ...) */
    MP_PCAP_FRAGMENT,    /* an IP fragment (not reassembled) */
    MP_PCAP_TRUNCATED,   /* headers cut by the snaplen */
    MP_PCAP_MALFORMED,   /* headers that contradict themselves */
} MpPcapDecode;

/* Decodes a packet of link type `dlt` (DLT_* of pcap/dlt.h): `caplen`
 * bytes captured of `wire_len`.  @return what it is. */
MpPcapDecode mp_pcap_decode(int dlt, const guint8 *pkt, gsize caplen,
                            gsize wire_len, MpPcapSegment *seg);

/* @return TRUE if link type `dlt` is one mp_pcap_decode() reads. */
gboolean mp_pcap_link_supported(int dlt);

typedef struct MpPcapFlows MpPcapFlows;

/* Opens capture `path`.  `window`: per direction (0: the default).
 * @return the reader, or NULL with @error set (cannot open, not a
 * capture libpcap reads, a link type it does not decode). */
MpPcapFlows *mp_pcap_flows_open(const char *path, gsize window,
                                const MpPcapOps *ops, gpointer data,
                                GError **error);
void mp_pcap_flows_free(MpPcapFlows *f); /* accepts NULL */
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MpPcapFlows, mp_pcap_flows_free)

/* Reads every packet and ends every direction still open.  A file that
 * ends inside a packet (a capture cut short) is not an error (the stats
 * say so).  @return FALSE with @error if a packet cannot be read. */
gboolean mp_pcap_flows_run(MpPcapFlows *f, GError **error);

/* What the reader saw: packets, link type, snaplen, connections (and
 * those skipped, with why), retransmitted and out-of-order segments,
 * gaps, truncated packets.  @return a new object (caller owns). */
json_object *mp_pcap_flows_stats(const MpPcapFlows *f);

/* Packets the snaplen cut (their TCP payload or their headers). */
guint64 mp_pcap_flows_truncated(const MpPcapFlows *f);
/* The capture's snaplen. */
int mp_pcap_flows_snaplen(const MpPcapFlows *f);
