/* pcap-flows.c: a capture's TCP connections, reassembled (pcap-flows.h).
 *
 * Per packet, every read bounds-checked (the file may hold any bytes):
 *
 *   link header   Ethernet: dst(6) src(6) type(2) [8100|88a8 tag(2) type(2)]x2
 *                 SLL:  type(2) arphrd(2) alen(2) addr(8) proto(2)  = 16
 *                 SLL2: proto(2) rsvd(2) ifindex(4) arphrd(2) type(1)
 *                       alen(1) addr(8)                             = 20
 *                 null: family(4, host order of the capturing machine)
 *                 loop: family(4, network order)
 *   IPv4          ver/ihl(1) tos(1) totlen(2) id(2) flags/frag(2) ttl(1)
 *                 proto(1) csum(2) src(4) dst(4) [options]
 *   IPv6          ver/tc/flow(4) paylen(2) next(1) hops(1) src(16) dst(16)
 *                 [hop-by-hop | routing | dest-opts: next(1) len8(1) ...]
 *   TCP           sport(2) dport(2) seq(4) ack(4) off/flags(2) win(2)
 *                 csum(2) urg(2) [options]  (RFC 9293 3.1)
 */
#include "config.h"
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <arpa/inet.h>
#include <pcap/pcap.h>
#include <gio/gio.h>
#include "pcap-flows.h"

#define MAX_SKIPPED_LISTED 64 /* skipped connections named in the stats */

typedef struct MpPcapFlows MpPcapFlows;
typedef struct Conn Conn;

typedef struct {
    Conn *conn;
    MpDir dir;
    MpTcpReasm *reasm; /* NULL until its first sequence number is known */
    gboolean fin, ended;
} Half;

/* Both endpoints, the lower one first, so that both directions find the
 * same entry. */
typedef struct {
    guint8 family;
    guint8 a[16], b[16];
    guint16 pa, pb;
} Key;

struct Conn {
    Key key;
    MpPcapConn pub;
    MpPcapFlows *owner;
    char *client, *server;
    guint8 client_addr[16];
    guint16 client_port;
    Half half[MP_DIR__MAX];
    gboolean skipped; /* no SYN: counted, its packets ignored */
    gboolean closed;
};

/* stdio's buffer under libpcap */
#define READ_BUFFER (1u << 20)

struct MpPcapFlows {
    pcap_t *pcap;
    char *iobuf; /* the FILE's buffer under libpcap (READ_BUFFER) */
    char *path;
    int dlt, snaplen;
    gsize window;
    MpPcapOps ops;
    gpointer data;
    GHashTable *conns; /* Key* -> Conn* (the latest on that key) */
    GPtrArray *all;    /* Conn*, by index; every one, for the end */
    gint64 now_us, first_us, last_us;
    gsize held; /* bytes held past holes, all directions */
    guint64 packets, bytes, tcp, other, fragments, malformed, truncated_hdr,
        truncated, no_syn, over_limit;
    MpTcpReasmStats closed; /* the counts of the directions freed */
    json_object *skipped; /* [{client, server, why}] */
    char *cut_error;      /* the file ended inside a packet */
};

/* ---- decoding ---- */

static guint16
be16(const guint8 *p)
{
    return p[0] << 8 | p[1];
}

static guint32
be32(const guint8 *p)
{
    return (guint32)p[0] << 24 | p[1] << 16 | p[2] << 8 | p[3];
}

gboolean
mp_pcap_link_supported(int dlt)
{
    switch (dlt) {
    case DLT_EN10MB:
    case DLT_LINUX_SLL:
    case DLT_LINUX_SLL2:
    case DLT_NULL:
    case DLT_LOOP:
    case DLT_RAW:
    case DLT_IPV4:
    case DLT_IPV6:
        return TRUE;
    }
    return FALSE;
}

/* The TCP header at `p` (`cap` bytes captured, `wire` on the wire). */
static MpPcapDecode
decode_tcp(const guint8 *p, gsize cap, gsize wire, MpPcapSegment *seg)
{
    if (cap < 20)
        return MP_PCAP_TRUNCATED;
    gsize hl = (p[12] >> 4) * 4u;
    if (hl < 20 || hl > wire)
        return MP_PCAP_MALFORMED;
    if (cap < hl)
        return MP_PCAP_TRUNCATED;
    seg->sport = be16(p);
    seg->dport = be16(p + 2);
    seg->seq = be32(p + 4);
    seg->ack = be32(p + 8);
    seg->flags = p[13];
    seg->payload = p + hl;
    seg->wire_len = wire - hl;
    seg->cap_len = MIN(cap - hl, seg->wire_len);
    return MP_PCAP_TCP;
}

/* `cap` bytes captured of an IP packet of `wire` bytes on the wire. */
static MpPcapDecode
decode_ip(const guint8 *p, gsize cap, gsize wire, MpPcapSegment *seg)
{
    if (cap < 1)
        return MP_PCAP_TRUNCATED;
    if (p[0] >> 4 == 4) {
        if (cap < 20)
            return MP_PCAP_TRUNCATED;
        gsize ihl = (p[0] & 15) * 4u, tot = be16(p + 2);
        /* 0: a segmentation-offload packet (BIG TCP) longer than 64 KiB:
         * its length is the wire's */
        if (tot == 0)
            tot = wire;
        if (ihl < 20 || tot < ihl || tot > wire)
            return MP_PCAP_MALFORMED;
        if (cap < ihl)
            return MP_PCAP_TRUNCATED;
        if ((be16(p + 6) & 0x3fff) != 0) /* MF or an offset */
            return MP_PCAP_FRAGMENT;
        if (p[9] != 6)
            return MP_PCAP_OTHER;
        seg->family = 4;
        memset(seg->src, 0, sizeof(seg->src));
        memset(seg->dst, 0, sizeof(seg->dst));
        memcpy(seg->src, p + 12, 4);
        memcpy(seg->dst, p + 16, 4);
        return decode_tcp(p + ihl, MIN(cap, tot) - ihl, tot - ihl, seg);
    }
    if (p[0] >> 4 == 6) {
        if (cap < 40)
            return MP_PCAP_TRUNCATED;
        gsize len = be16(p + 4), off = 40;
        guint8 next = p[6];
        /* 0: a jumbogram (BIG TCP over IPv6): the wire's length */
        if (len == 0)
            len = wire >= 40 ? wire - 40 : 0;
        if (40 + len > wire)
            return MP_PCAP_MALFORMED;
        seg->family = 6;
        memcpy(seg->src, p + 8, 16);
        memcpy(seg->dst, p + 24, 16);
        for (int hops = 0; next != 6; hops++) {
            if (next == 44)
                return MP_PCAP_FRAGMENT;
            if ((next != 0 && next != 43 && next != 60) || hops > 8)
                return MP_PCAP_OTHER;
            if (cap < off + 2)
                return MP_PCAP_TRUNCATED;
            gsize ext = (p[off + 1] + 1) * 8u;
            next = p[off];
            off += ext;
            if (off > 40 + len)
                return MP_PCAP_MALFORMED;
        }
        if (cap < off)
            return MP_PCAP_TRUNCATED;
        return decode_tcp(p + off, MIN(cap, 40 + len) - off, 40 + len - off,
                          seg);
    }
    return MP_PCAP_OTHER;
}

MpPcapDecode
mp_pcap_decode(int dlt, const guint8 *pkt, gsize caplen, gsize wire_len,
               MpPcapSegment *seg)
{
    gsize hl;
    guint proto; /* an Ethernet type */

    wire_len = MAX(wire_len, caplen);
    switch (dlt) {
    case DLT_EN10MB:
        if (caplen < 14)
            return MP_PCAP_TRUNCATED;
        hl = 14;
        proto = be16(pkt + 12);
        for (int tags = 0; tags < 2 && (proto == 0x8100 || proto == 0x88a8);
             tags++) {
            if (caplen < hl + 4)
                return MP_PCAP_TRUNCATED;
            proto = be16(pkt + hl + 2);
            hl += 4;
        }
        break;
    case DLT_LINUX_SLL:
        if (caplen < 16)
            return MP_PCAP_TRUNCATED;
        hl = 16;
        proto = be16(pkt + 14);
        break;
    case DLT_LINUX_SLL2:
        if (caplen < 20)
            return MP_PCAP_TRUNCATED;
        hl = 20;
        proto = be16(pkt);
        break;
    case DLT_NULL:
    case DLT_LOOP: {
        if (caplen < 4)
            return MP_PCAP_TRUNCATED;
        guint32 fam = be32(pkt);
        /* null: the capturing host's order; a family fits in 16 bits */
        if (dlt == DLT_NULL && fam > 0xffff)
            fam = GUINT32_SWAP_LE_BE(fam);
        hl = 4;
        /* AF_INET is 2 everywhere; AF_INET6 is 10 (Linux), 24, 28 or 30
         * (the BSDs, macOS) */
        if (fam == 2)
            proto = 0x0800;
        else if (fam == 10 || fam == 24 || fam == 28 || fam == 30)
            proto = 0x86dd;
        else
            return MP_PCAP_OTHER;
        break;
    }
    case DLT_RAW:
    case DLT_IPV4:
    case DLT_IPV6:
        hl = 0;
        proto = 0; /* the IP version tells */
        break;
    default:
        return MP_PCAP_OTHER;
    }
    if (proto && proto != 0x0800 && proto != 0x86dd)
        return MP_PCAP_OTHER;
    return decode_ip(pkt + hl, caplen - hl, wire_len - hl, seg);
}

/* ---- connections ---- */

static guint
key_hash(gconstpointer k)
{
    const guint8 *p = k;
    guint h = 2166136261u; /* FNV-1a over the whole (zero-padded) key */
    for (gsize i = 0; i < sizeof(Key); i++)
        h = (h ^ p[i]) * 16777619u;
    return h;
}

static gboolean
key_equal(gconstpointer a, gconstpointer b)
{
    return memcmp(a, b, sizeof(Key)) == 0;
}

static void
make_key(const MpPcapSegment *s, Key *k)
{
    int c = memcmp(s->src, s->dst, 16);
    gboolean swap = c > 0 || (c == 0 && s->sport > s->dport);

    memset(k, 0, sizeof(*k));
    k->family = s->family;
    memcpy(k->a, swap ? s->dst : s->src, 16);
    memcpy(k->b, swap ? s->src : s->dst, 16);
    k->pa = swap ? s->dport : s->sport;
    k->pb = swap ? s->sport : s->dport;
}

static char *
endpoint(int family, const guint8 *addr, guint16 port)
{
    char buf[INET6_ADDRSTRLEN];
    inet_ntop(family == 4 ? AF_INET : AF_INET6, addr, buf, sizeof(buf));
    return family == 4 ? g_strdup_printf("%s:%u", buf, port)
                       : g_strdup_printf("[%s]:%u", buf, port);
}

static void
half_data(gpointer data, guint64 off, const guint8 *buf, gsize len)
{
    Half *h = data;
    MpPcapFlows *f = h->conn->owner;
    if (f->ops.data)
        f->ops.data(f->data, &h->conn->pub, h->dir, off, buf, len, f->now_us);
}

static void
half_gap(gpointer data, guint64 off, guint64 len, MpTcpGapWhy why)
{
    Half *h = data;
    MpPcapFlows *f = h->conn->owner;
    if (f->ops.gap)
        f->ops.gap(f->data, &h->conn->pub, h->dir, off, len, why, f->now_us);
}

static const MpTcpReasmOps half_ops = {.data = half_data, .gap = half_gap};

static void
conn_free(gpointer p)
{
    Conn *c = p;
    for (int d = 0; d < MP_DIR__MAX; d++)
        mp_tcp_reasm_free(c->half[d].reasm);
    g_free(c->client);
    g_free(c->server);
    g_free(c);
}

static void
skip(MpPcapFlows *f, const char *client, const char *server, const char *why)
{
    if (json_object_array_length(f->skipped) >= MAX_SKIPPED_LISTED)
        return;
    json_object *o = json_object_new_object();
    json_object_object_add(o, "client", json_object_new_string(client));
    json_object_object_add(o, "server", json_object_new_string(server));
    json_object_object_add(o, "why", json_object_new_string(why));
    json_object_array_add(f->skipped, o);
}

static void
add_stats(MpTcpReasmStats *sum, const MpTcpReasm *r)
{
    MpTcpReasmStats st;
    mp_tcp_reasm_stats(r, &st);
    sum->segments += st.segments;
    sum->out_of_order += st.out_of_order;
    sum->repeated += st.repeated;
    sum->gaps += st.gaps;
    sum->gap_bytes += st.gap_bytes;
    sum->held_max = MAX(sum->held_max, st.held_max);
}

static void
start_half(Conn *c, MpDir dir, guint32 isn_next)
{
    Half *h = &c->half[dir];
    if (!h->reasm)
        h->reasm = mp_tcp_reasm_new(isn_next, c->owner->window, &half_ops, h);
}

/* `dir` ends (after whatever its reassembler still delivers). */
static void
end_half(Conn *c, MpDir dir, MpEndReason how)
{
    Half *h = &c->half[dir];
    MpPcapFlows *f = c->owner;
    if (h->ended)
        return;
    if (h->reasm) {
        gsize before = mp_tcp_reasm_held(h->reasm);
        mp_tcp_reasm_finish(h->reasm);
        f->held -= before;
    }
    h->ended = TRUE;
    if (f->ops.end)
        f->ops.end(f->data, &c->pub, dir, how, f->now_us);
    if (c->half[!dir].ended) {
        c->closed = TRUE;
        for (int d = 0; d < MP_DIR__MAX; d++) {
            if (c->half[d].reasm)
                add_stats(&f->closed, c->half[d].reasm);
            g_clear_pointer(&c->half[d].reasm, mp_tcp_reasm_free);
        }
    }
}

static Conn *
new_conn(MpPcapFlows *f, const Key *k, const MpPcapSegment *s)
{
    Conn *c = g_new0(Conn, 1);
    c->key = *k;
    c->owner = f;
    c->client = endpoint(s->family, s->src, s->sport);
    c->server = endpoint(s->family, s->dst, s->dport);
    memcpy(c->client_addr, s->src, 16);
    c->client_port = s->sport;
    c->pub.index = f->all->len;
    c->pub.client = c->client;
    c->pub.server = c->server;
    c->pub.open_us = f->now_us;
    for (int d = 0; d < MP_DIR__MAX; d++) {
        c->half[d].conn = c;
        c->half[d].dir = d;
    }
    g_ptr_array_add(f->all, c);
    g_hash_table_replace(f->conns, &c->key, c);
    return c;
}

static void
segment(MpPcapFlows *f, const MpPcapSegment *s)
{
    Key k;
    make_key(s, &k);
    Conn *c = g_hash_table_lookup(f->conns, &k);
    gboolean syn = (s->flags & (MP_TCP_FSYN | MP_TCP_FACK)) == MP_TCP_FSYN;

    if (syn && (!c || c->skipped || c->closed
                || !c->half[MP_DIR_TO_DST].reasm
                || memcmp(c->client_addr, s->src, 16) != 0
                || c->client_port != s->sport
                || mp_tcp_reasm_offset(c->half[MP_DIR_TO_DST].reasm) > 0)) {
        /* a new connection (a port used again after the last one) */
        if (f->all->len >= MP_PCAP_MAX_CONNS) {
            f->over_limit++;
            return;
        }
        if (c && !c->closed && !c->skipped)
            for (int d = 0; d < MP_DIR__MAX; d++)
                end_half(c, d, MP_END_ABORTED);
        c = new_conn(f, &k, s);
        start_half(c, MP_DIR_TO_DST, s->seq + 1);
        if (f->ops.open)
            f->ops.open(f->data, &c->pub);
        return;
    }
    if (!c) {
        if (f->all->len >= MP_PCAP_MAX_CONNS) {
            f->over_limit++;
            return;
        }
        c = new_conn(f, &k, s);
        c->skipped = TRUE;
        f->no_syn++;
        skip(f, c->client, c->server,
             "no SYN in the capture: the connection opened before it started "
             "(its first bytes are missing)");
        return;
    }
    if (c->skipped || c->closed)
        return;

    MpDir dir = memcmp(c->client_addr, s->src, 16) == 0
                        && c->client_port == s->sport
                    ? MP_DIR_TO_DST
                    : MP_DIR_TO_SRC;
    Half *h = &c->half[dir], *peer = &c->half[!dir];

    if (s->flags & MP_TCP_FSYN) {
        if (dir == MP_DIR_TO_SRC)
            start_half(c, MP_DIR_TO_SRC, s->seq + 1);
        return; /* (a SYN's payload, TCP Fast Open, is not used by QEMU) */
    }
    /* the SYN-ACK was not captured: the client's ACK names its number */
    if (dir == MP_DIR_TO_DST && (s->flags & MP_TCP_FACK))
        start_half(c, MP_DIR_TO_SRC, s->ack);
    if (h->reasm && !h->ended) {
        gsize before = mp_tcp_reasm_held(h->reasm);
        if (s->wire_len)
            mp_tcp_reasm_segment(h->reasm, s->seq, s->payload, s->cap_len,
                                 s->wire_len);
        if (s->flags & MP_TCP_FFIN) {
            h->fin = TRUE;
            mp_tcp_reasm_fin(h->reasm, s->seq + (guint32)s->wire_len);
        }
        f->held = f->held - before + mp_tcp_reasm_held(h->reasm);
        if (f->held > MP_PCAP_HELD_MAX) {
            before = mp_tcp_reasm_held(h->reasm);
            mp_tcp_reasm_skip(h->reasm, MP_TCP_GAP_WINDOW);
            f->held = f->held - before + mp_tcp_reasm_held(h->reasm);
        }
    }
    if ((s->flags & MP_TCP_FACK) && peer->reasm && !peer->ended) {
        gsize before = mp_tcp_reasm_held(peer->reasm);
        mp_tcp_reasm_ack(peer->reasm, s->ack);
        f->held = f->held - before + mp_tcp_reasm_held(peer->reasm);
    }
    if (s->flags & MP_TCP_FRST) {
        end_half(c, dir, MP_END_RESET);
        if (!c->closed)
            end_half(c, !dir, MP_END_ABORTED);
        return;
    }
    for (int d = 0; d < MP_DIR__MAX && !c->closed; d++)
        if (c->half[d].fin && !c->half[d].ended
            && mp_tcp_reasm_done(c->half[d].reasm))
            end_half(c, d, MP_END_FIN);
}

/* ---- the file ---- */

MpPcapFlows *
mp_pcap_flows_open(const char *path, gsize window, const MpPcapOps *ops,
                   gpointer data, GError **error)
{
    char errbuf[PCAP_ERRBUF_SIZE] = "";
    pcap_t *p;
    char *iobuf = NULL;

    if (strcmp(path, "-") == 0) {
        p = pcap_open_offline_with_tstamp_precision(
            path, PCAP_TSTAMP_PRECISION_MICRO, errbuf);
    } else {
        /* libpcap reads through stdio: with its 4 KiB buffer, a read()
         * every two or three MTU-sized packets (a third of analyze's time
         * on such a capture) */
        FILE *fp = fopen(path, "rbe");
        if (!fp) {
            g_set_error(error, G_IO_ERROR,
                        g_io_error_from_errno(errno),
                        "%s: cannot open: %s", path, g_strerror(errno));
            return NULL;
        }
        iobuf = g_malloc(READ_BUFFER);
        setvbuf(fp, iobuf, _IOFBF, READ_BUFFER);
        p = pcap_fopen_offline_with_tstamp_precision(
            fp, PCAP_TSTAMP_PRECISION_MICRO, errbuf);
        if (!p)
            fclose(fp);
    }
    if (!p) {
        g_free(iobuf);
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                    "%s: cannot read as a packet capture: %s", path, errbuf);
        return NULL;
    }
    int dlt = pcap_datalink(p);
    if (!mp_pcap_link_supported(dlt)) {
        const char *name = pcap_datalink_val_to_name(dlt);
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_NOT_SUPPORTED,
                    "%s: link type %s (%d) is not one migproxy decodes "
                    "(Ethernet, Linux cooked SLL/SLL2, loopback/null, raw IP)",
                    path, name ? name : "?", dlt);
        pcap_close(p);
        g_free(iobuf);
        return NULL;
    }
    MpPcapFlows *f = g_new0(MpPcapFlows, 1);
    f->pcap = p;
    f->iobuf = iobuf;
    f->path = g_strdup(path);
    f->dlt = dlt;
    f->snaplen = pcap_snapshot(p);
    f->window = window ? window : MP_TCP_WINDOW_DEFAULT;
    if (ops)
        f->ops = *ops;
    f->data = data;
    f->conns = g_hash_table_new(key_hash, key_equal);
    f->all = g_ptr_array_new_with_free_func(conn_free);
    f->skipped = json_object_new_array();
    f->first_us = -1;
    return f;
}

void
mp_pcap_flows_free(MpPcapFlows *f)
{
    if (!f)
        return;
    pcap_close(f->pcap);
    g_free(f->iobuf); /* (after the FILE using it is closed) */
    g_hash_table_destroy(f->conns);
    g_ptr_array_free(f->all, TRUE);
    json_object_put(f->skipped);
    g_free(f->cut_error);
    g_free(f->path);
    g_free(f);
}

/* The packet's time in µs since the epoch, within [0, the end of year
 * 9999]: a pcapng timestamp is 64 bits of any unit, and its seconds
 * times 10^6 may not fit (a fuzzer's find). */
static gint64
packet_time(const struct pcap_pkthdr *hdr)
{
    const gint64 max_sec = 253402300799ll; /* 9999-12-31T23:59:59Z */
    gint64 sec = hdr->ts.tv_sec, usec = hdr->ts.tv_usec;

    if (sec < 0 || usec < 0)
        return 0;
    if (sec > max_sec)
        return max_sec * G_USEC_PER_SEC + (G_USEC_PER_SEC - 1);
    return sec * G_USEC_PER_SEC + MIN(usec, G_USEC_PER_SEC - 1);
}

gboolean
mp_pcap_flows_run(MpPcapFlows *f, GError **error)
{
    struct pcap_pkthdr *hdr;
    const u_char *pkt;
    int rc;
    gboolean ok = TRUE;

    while ((rc = pcap_next_ex(f->pcap, &hdr, &pkt)) == 1) {
        MpPcapSegment s;
        gint64 t = packet_time(hdr);
        /* time never goes back for the pipelines (a capture's clock may
         * step, packets from two CPUs may interleave) */
        f->now_us = MAX(t, f->now_us);
        if (f->first_us < 0)
            f->first_us = f->now_us;
        f->last_us = f->now_us;
        f->packets++;
        f->bytes += hdr->caplen;
        switch (mp_pcap_decode(f->dlt, pkt, hdr->caplen, hdr->len, &s)) {
        case MP_PCAP_TCP:
            f->tcp++;
            if (s.cap_len < s.wire_len)
                f->truncated++;
            segment(f, &s);
            break;
        case MP_PCAP_OTHER:
            f->other++;
            break;
        case MP_PCAP_FRAGMENT:
            f->fragments++;
            break;
        case MP_PCAP_TRUNCATED:
            f->truncated_hdr++;
            break;
        case MP_PCAP_MALFORMED:
            f->malformed++;
            break;
        }
    }
    if (rc == PCAP_ERROR) {
        /* libpcap: "truncated dump file; tried to read N captured bytes,
         * only got M": the capture was cut short (tcpdump killed) */
        const char *e = pcap_geterr(f->pcap);
        if (strstr(e, "truncated")) {
            f->cut_error = g_strdup(e);
        } else {
            g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                        "%s: after packet %" G_GUINT64_FORMAT ": %s", f->path,
                        f->packets, e);
            ok = FALSE;
        }
    }
    for (guint i = 0; i < f->all->len; i++) {
        Conn *c = g_ptr_array_index(f->all, i);
        if (c->skipped || c->closed)
            continue;
        /* a FIN whose bytes before it are missing ends as a FIN, after
         * the gap */
        for (int d = 0; d < MP_DIR__MAX; d++)
            end_half(c, d, c->half[d].fin ? MP_END_FIN : MP_END_MISSING);
    }
    return ok;
}

guint64
mp_pcap_flows_truncated(const MpPcapFlows *f)
{
    return f->truncated + f->truncated_hdr;
}

int
mp_pcap_flows_snaplen(const MpPcapFlows *f)
{
    return f->snaplen;
}

static json_object *
u64(guint64 v)
{
    return json_object_new_uint64(v);
}

json_object *
mp_pcap_flows_stats(const MpPcapFlows *f)
{
    json_object *o = json_object_new_object();
    MpTcpReasmStats sum = f->closed;
    const char *name = pcap_datalink_val_to_name(f->dlt);

    for (guint i = 0; i < f->all->len; i++) {
        Conn *c = g_ptr_array_index(f->all, i);
        for (int d = 0; d < MP_DIR__MAX; d++)
            if (c->half[d].reasm) /* (closed ones were added then) */
                add_stats(&sum, c->half[d].reasm);
    }
    json_object_object_add(o, "link_type",
                           json_object_new_string(name ? name : "?"));
    json_object_object_add(o, "snaplen", json_object_new_int(f->snaplen));
    json_object_object_add(o, "packets", u64(f->packets));
    json_object_object_add(o, "bytes", u64(f->bytes));
    json_object_object_add(o, "tcp_packets", u64(f->tcp));
    json_object_object_add(o, "other_packets", u64(f->other));
    json_object_object_add(o, "ip_fragments", u64(f->fragments));
    json_object_object_add(o, "malformed_packets", u64(f->malformed));
    json_object_object_add(o, "truncated_headers", u64(f->truncated_hdr));
    json_object_object_add(o, "truncated_payloads", u64(f->truncated));
    json_object_object_add(o, "connections", u64(f->all->len - f->no_syn));
    json_object_object_add(o, "connections_without_syn", u64(f->no_syn));
    json_object_object_add(o, "connections_over_limit", u64(f->over_limit));
    json_object_object_add(o, "window_bytes", u64(f->window));
    json_object_object_add(o, "tcp_segments", u64(sum.segments));
    json_object_object_add(o, "out_of_order_segments", u64(sum.out_of_order));
    json_object_object_add(o, "repeated_bytes", u64(sum.repeated));
    json_object_object_add(o, "gaps", u64(sum.gaps));
    json_object_object_add(o, "gap_bytes", u64(sum.gap_bytes));
    json_object_object_add(o, "held_max_bytes", u64(sum.held_max));
    if (f->first_us >= 0)
        json_object_object_add(o, "duration_us",
                               u64(f->last_us - f->first_us));
    if (f->cut_error)
        json_object_object_add(o, "cut", json_object_new_string(f->cut_error));
    json_object_object_add(o, "skipped", json_object_get(f->skipped));
    return o;
}
