/* mfd-parser.c: one multifd channel (source to destination).
 * Spec: QEMU migration/multifd.c multifd_send_initial_packet(),
 * multifd_recv_unfill_packet(); multifd-zstd.c, multifd-zlib.c (facts
 * only, never code).
 *
 * Handshake, MultiFDInit_t, 64 bytes:
 *   0 be32 magic 0x11223344 | 4 be32 version 1 | 8 uuid[16] | 24 u8 id |
 *   25..63 unused
 *
 * Then packets until the channel closes.  All start with
 *   0 be32 magic | 4 be32 version | 8 be32 flags
 *     flags: 0x01 SYNC, 0x3e compression (0 none, 0x02 zlib, 0x04 zstd,
 *            0x08 QPL, 0x10 UADK, 0x20 QATzip), 0x40 DEVICE_STATE [10.0+]
 *
 * RAM packet, MultiFDPacket_t: 320 fixed bytes + page_count offsets,
 * page_count = 512 KiB / page_size whatever pages_alloc says (QEMU 10.0
 * sends SYNC packets with pages_alloc 0 and the full offset array):
 *   12 be32 pages_alloc | 16 be32 normal_pages | 20 be32 next_packet_size |
 *   24 be64 packet_num  | 32 be32 zero_pages [9.0+] | 36..63 unused |
 *   64 ramblock[256]    | 320 be64 offset[page_count]
 *                           normal pages first, then zero pages
 * followed, only if normal_pages > 0, by next_packet_size bytes: the
 * normal pages in offset order (nocomp), or one packet's worth of a
 * per-channel compressed stream (zstd/zlib flushed at each packet end).
 * A packet without normal pages carries a stale next_packet_size.
 *
 * Device-state packet [10.0+], MultiFDPacketDeviceState_t, 276 bytes:
 *   12 idstr[256] | 268 be32 instance_id | 272 be32 next_packet_size
 * followed by next_packet_size bytes of device state.
 */
#include <stdarg.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>
#include <zstd_errors.h>
#include "mfd-parser.h"
#include "stream-resync.h"

#define MFD_COMMON_HDR 12

/* Compressed and device-state bytes are reported in chunks of this size
 * (the last one shorter), gathered when a feed splits one: the record
 * boundaries then depend on the stream only, never on how it was read. */
#define MFD_DATA_CHUNK (64u << 10)

/* VFIO device state comes in buffers far below this; beyond it the
 * stream is surely desynchronised. */
#define MFD_MAX_DEVICE_STATE (1u << 30)

/* QEMU compresses a packet (at most 512 KiB of pages) into a buffer of
 * ZSTD_compressBound() = 526336 bytes (zstd) or compressBound() = 524461
 * bytes (zlib) and fails if it does not fit.  The slack absorbs other
 * library versions.  QPL, UADK and QATzip frame their data differently;
 * for them the bound is the 2 x 512 KiB QEMU's zstd receiver reserves. */
#define MFD_BOUND_SLACK 4096u

/* QEMU compresses each channel as one zstd stream from ZSTD_initCStream()
 * at multifd-zstd-level (0..20, QEMU refuses more).  Its frame window is
 * then zstd's for that level with an unknown size: 2^19 at level 1, 2^21
 * at the default 3, 2^23 at 17..19 and 2^25 at 20 (measured with
 * ZSTD_getFrameHeader() on libzstd 1.5.4).  The decoder reserves the window
 * plus two blocks (32.5 MiB at 2^25), so libzstd's own limit of 2^27
 * would let any peer take 128 MiB per channel.  A frame asking for more
 * than QEMU's highest level is not QEMU's: the decoder refuses its header
 * before reserving anything. */
#define MFD_ZSTD_WINDOW_LOG_MAX 25

/* After a gap, a packet header is looked for in at most this many bytes
 * from each position: a RAM packet's header (1344 bytes at 4 KiB pages,
 * 4416 at 512-byte pages) or a device-state one. */
#define MFD_RESYNC_LIMIT (MP_MULTIFD_PACKET_FIXED_SIZE + 8 * 1024)

/* Where the fields after the common 12 bytes are, counted from the
 * packet's first byte as in the layout above. */
enum {
    RAM_PAGES_ALLOC = 12,
    RAM_NORMAL_PAGES = 16,
    RAM_NEXT_PACKET_SIZE = 20,
    RAM_PACKET_NUM = 24,
    RAM_ZERO_PAGES = 32,
    RAM_BLOCK = 64,
    RAM_OFFSETS = MP_MULTIFD_PACKET_FIXED_SIZE,
    DEV_IDSTR = 12,
    DEV_INSTANCE_ID = 268,
    DEV_NEXT_PACKET_SIZE = 272,
};

typedef enum {
    M_INIT,      /* MultiFDInit_t */
    M_COMMON,    /* the 12 bytes every packet starts with */
    M_RAM_HDR,   /* the rest of a RAM packet's header */
    M_DEV_HDR,   /* the rest of a device-state packet's header */
    M_PAGE,      /* nocomp: the next normal page */
    M_DATA,      /* compressed or device-state bytes, in chunks */
    M_PAGES_OUT, /* decoded and zero pages: records that need no input */
} MfdState;

/* What a state function did; the feed loop acts on it. */
typedef enum {
    MS_NEXT,  /* go on in p->state */
    MS_SHORT, /* the input ended inside a field */
    MS_EMIT,  /* `rec` is a whole record: report it, go on */
    MS_ERROR, /* p->error is set */
} MfdStep;

struct MpMfdParser {
    char *channel;
    guint32 page_size;
    guint32 page_count; /* offset slots per packet */
    gsize ram_hdr_size; /* 320 + 8 * page_count */
    MpRecordFunc cb;
    gpointer user_data;
    gboolean decode;

    MfdState state;
    guint64 off;       /* stream offset of buf[0] during a feed */
    guint64 rec_start; /* offset of the current record's first byte */
    GError *error;     /* sticky */

    MpAccum hdr_acc;   /* the init or a header split across feeds */
    MpAccum page_acc;  /* a nocomp page split across feeds */
    MpAccum chunk_acc; /* a data chunk split across feeds (lazy) */

    /* the current packet */
    MpMfdInfo pkt;
    guint32 pkt_flags; /* from the common header */
    guint8 *offsets;   /* pkt.offsets: its pages' entries, kept for the
                          MFD_PAGE records of later feeds */
    char name[257];    /* ramblock or device idstr */
    guint64 pkt_start;
    gboolean device_state;
    guint32 page_i; /* next page to report */
    guint64 data_left;
    gboolean decoding;

    /* compression method of the channel, fixed by its first packet with
     * normal pages (packets without pages may not carry it) */
    guint32 method;
    gboolean have_method;

    /* after a gap: the scan for the next packet header, and the highest
     * packet_num seen (QEMU numbers the packets of all channels from one
     * counter: a channel's numbers only grow) */
    MpResync rs;
    guint64 last_packet_num;
    gboolean have_packet_num;

    /* zstd: one decoder for the whole channel, and one packet of pages */
    ZSTD_DStream *zds;
    guint8 *dec_buf; /* grows to the largest packet, at most 512 KiB + 1 */
    gsize dec_cap;
    ZSTD_outBuffer out;
};

MpMfdParser *
mp_mfd_parser_new(const char *channel, guint32 page_size, MpRecordFunc cb,
                  gpointer user_data)
{
    g_return_val_if_fail(page_size >= 512 && page_size <= MP_MAX_PAGE_SIZE
                             && (page_size & (page_size - 1)) == 0,
                         NULL);

    MpMfdParser *p = g_new0(MpMfdParser, 1);
    p->channel = g_strdup(channel);
    p->page_size = page_size;
    p->page_count = MP_MULTIFD_PACKET_SIZE / page_size;
    p->ram_hdr_size = MP_MULTIFD_PACKET_FIXED_SIZE + 8 * p->page_count;
    p->cb = cb;
    p->user_data = user_data;
    p->decode = TRUE;
    mp_accum_init(&p->hdr_acc,
                  MAX(p->ram_hdr_size - MFD_COMMON_HDR,
                      MAX(MP_MULTIFD_DEVICE_STATE_HDR - MFD_COMMON_HDR,
                          MP_MULTIFD_INIT_SIZE)));
    p->offsets = g_malloc(8 * (gsize)p->page_count);
    mp_accum_init(&p->page_acc, page_size);
    /* chunk_acc: on the first compressed or device-state packet */
    mp_resync_init(&p->rs, MFD_RESYNC_LIMIT);
    return p;
}

void
mp_mfd_parser_free(MpMfdParser *p)
{
    if (!p)
        return;
    g_free(p->channel);
    g_clear_error(&p->error);
    mp_accum_clear(&p->hdr_acc);
    g_free(p->offsets);
    mp_accum_clear(&p->page_acc);
    mp_accum_clear(&p->chunk_acc);
    ZSTD_freeDStream(p->zds);
    g_free(p->dec_buf);
    mp_resync_clear(&p->rs);
    g_free(p);
}

void
mp_mfd_parser_set_decode(MpMfdParser *p, gboolean decode)
{
    g_return_if_fail(p->off == 0);
    p->decode = decode;
}

guint64
mp_mfd_parser_offset(const MpMfdParser *p)
{
    return p->off;
}

static void set_error(MpMfdParser *p, MpParseErrorCode code, const char *fmt,
                      ...) G_GNUC_PRINTF(3, 4);

/* Sets the sticky error, prefixed with the channel name. */
static void
set_error(MpMfdParser *p, MpParseErrorCode code, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    mp_parse_error_set_valist(&p->error, p->channel, code, fmt, ap);
    va_end(ap);
    /* the error is sticky: the decoder (up to 32.5 MiB) is of no more use
     * while the relay forwards the rest of the channel */
    ZSTD_freeDStream(p->zds);
    p->zds = NULL;
    g_clear_pointer(&p->dec_buf, g_free);
    p->dec_cap = 0;
}

static const char *
method_name(guint32 method)
{
    switch (method) {
    case MP_MULTIFD_FLAG_NOCOMP:
        return "none";
    case MP_MULTIFD_FLAG_ZLIB:
        return "zlib";
    case MP_MULTIFD_FLAG_ZSTD:
        return "zstd";
    case MP_MULTIFD_FLAG_QPL:
        return "qpl";
    case MP_MULTIFD_FLAG_UADK:
        return "uadk";
    case MP_MULTIFD_FLAG_QATZIP:
        return "qatzip";
    default:
        return NULL;
    }
}

static guint32
compressed_bound(guint32 method)
{
    switch (method) {
    case MP_MULTIFD_FLAG_ZSTD:
        return ZSTD_COMPRESSBOUND(MP_MULTIFD_PACKET_SIZE) + MFD_BOUND_SLACK;
    case MP_MULTIFD_FLAG_ZLIB:
        return compressBound(MP_MULTIFD_PACKET_SIZE) + MFD_BOUND_SLACK;
    default:
        return 2 * MP_MULTIFD_PACKET_SIZE;
    }
}

/* The 64-byte init at `h`. */
static gboolean
check_init(MpMfdParser *p, const guint8 *h)
{
    guint32 magic = mp_be32(h), version = mp_be32(h + 4);

    if (magic != MP_MULTIFD_MAGIC) {
        set_error(p, MP_PARSE_ERROR_MAGIC,
                  "init magic 0x%x at offset %" G_GUINT64_FORMAT
                  " (expected 0x%x)",
                  magic, p->rec_start, MP_MULTIFD_MAGIC);
        return FALSE;
    }
    if (version != MP_MULTIFD_VERSION) {
        set_error(p, MP_PARSE_ERROR_VERSION,
                  "init version %u at offset %" G_GUINT64_FORMAT
                  " (expected %u)",
                  version, p->rec_start + 4, MP_MULTIFD_VERSION);
        return FALSE;
    }
    return TRUE;
}

/* The 12 bytes every packet starts with, at `h`. */
static gboolean
check_common(MpMfdParser *p, const guint8 *h)
{
    guint32 magic = mp_be32(h), version = mp_be32(h + 4);
    guint32 flags = mp_be32(h + 8);
    guint32 known = MP_MULTIFD_FLAG_SYNC | MP_MULTIFD_FLAG_COMPRESS_MASK
                    | MP_MULTIFD_FLAG_DEVICE_STATE;

    if (magic != MP_MULTIFD_MAGIC) {
        set_error(p, MP_PARSE_ERROR_MAGIC,
                  "packet magic 0x%x at offset %" G_GUINT64_FORMAT
                  " (expected 0x%x)",
                  magic, p->rec_start, MP_MULTIFD_MAGIC);
        return FALSE;
    }
    if (version != MP_MULTIFD_VERSION) {
        set_error(p, MP_PARSE_ERROR_VERSION,
                  "packet version %u at offset %" G_GUINT64_FORMAT
                  " (expected %u)",
                  version, p->rec_start + 4, MP_MULTIFD_VERSION);
        return FALSE;
    }
    if (flags & ~known) {
        set_error(p, MP_PARSE_ERROR_MULTIFD,
                  "packet flags 0x%x at offset %" G_GUINT64_FORMAT
                  " (expected only bits of 0x%x)",
                  flags, p->rec_start + 8, known);
        return FALSE;
    }
    if (!method_name(flags & MP_MULTIFD_FLAG_COMPRESS_MASK)) {
        set_error(p, MP_PARSE_ERROR_MULTIFD,
                  "packet compression 0x%x at offset %" G_GUINT64_FORMAT
                  " (expected one of 0x0, 0x2, 0x4, 0x8, 0x10, 0x20)",
                  flags & MP_MULTIFD_FLAG_COMPRESS_MASK, p->rec_start + 8);
        return FALSE;
    }
    return TRUE;
}

/* @return the field at packet offset `at` in `rest`, the header after
 * the common 12 bytes. */
static const guint8 *
field(const guint8 *rest, gsize at)
{
    return rest + (at - MFD_COMMON_HDR);
}

/* The page counts, the block name and the offsets of p->pkt: what QEMU's
 * receiver checks.  Keeps the offsets of its pages. */
static gboolean
check_ram_pages(MpMfdParser *p, const guint8 *block, const guint8 *offsets)
{
    const MpMfdInfo *m = &p->pkt;
    guint64 pages = (guint64)m->normal_pages + m->zero_pages;

    /* pages against pages_alloc, and pages_alloc against the slots of the
     * offset array */
    if (m->pages_alloc > p->page_count) {
        set_error(p, MP_PARSE_ERROR_MULTIFD,
                  "packet %" G_GUINT64_FORMAT " at offset %" G_GUINT64_FORMAT
                  " has pages_alloc %u (expected at most %u)",
                  m->packet_num, p->rec_start, m->pages_alloc, p->page_count);
        return FALSE;
    }
    if (pages > m->pages_alloc) {
        set_error(p, MP_PARSE_ERROR_MULTIFD,
                  "packet %" G_GUINT64_FORMAT " at offset %" G_GUINT64_FORMAT
                  " has %u normal + %u zero pages (expected at most "
                  "pages_alloc %u)",
                  m->packet_num, p->rec_start, m->normal_pages, m->zero_pages,
                  m->pages_alloc);
        return FALSE;
    }
    if (pages > 0) {
        if (!memchr(block, 0, 256)) {
            set_error(p, MP_PARSE_ERROR_MULTIFD,
                      "packet %" G_GUINT64_FORMAT
                      " at offset %" G_GUINT64_FORMAT
                      " has a RAMBlock name without NUL in its 256 bytes",
                      m->packet_num, p->rec_start);
            return FALSE;
        }
        if (p->name[0] == 0) {
            set_error(p, MP_PARSE_ERROR_MULTIFD,
                      "packet %" G_GUINT64_FORMAT
                      " at offset %" G_GUINT64_FORMAT " has %" G_GUINT64_FORMAT
                      " pages but an empty RAMBlock name",
                      m->packet_num, p->rec_start, pages);
            return FALSE;
        }
    }
    /* (pages <= pages_alloc <= page_count: the copy fits) */
    memcpy(p->offsets, offsets, 8 * pages);
    for (guint32 i = 0; i < pages; i++) {
        guint64 o = mp_be64(offsets + 8 * i);
        if (o & (p->page_size - 1)) {
            set_error(p, MP_PARSE_ERROR_MULTIFD,
                      "packet %" G_GUINT64_FORMAT
                      " at offset %" G_GUINT64_FORMAT
                      " lists page offset 0x%" G_GINT64_MODIFIER
                      "x at index %u (expected a multiple of %u)",
                      m->packet_num, p->rec_start, o, i, p->page_size);
            return FALSE;
        }
    }
    return TRUE;
}

/* The compression method and data length of p->pkt, which has normal
 * pages. */
static gboolean
check_ram_method(MpMfdParser *p)
{
    const MpMfdInfo *m = &p->pkt;
    guint32 method = m->flags & MP_MULTIFD_FLAG_COMPRESS_MASK;

    if (!p->have_method) {
        p->method = method;
        p->have_method = TRUE;
    } else if (method != p->method) {
        set_error(p, MP_PARSE_ERROR_MULTIFD,
                  "packet %" G_GUINT64_FORMAT " at offset %" G_GUINT64_FORMAT
                  " is compressed with %s (expected %s, as earlier packets "
                  "of the channel)",
                  m->packet_num, p->rec_start, method_name(method),
                  method_name(p->method));
        return FALSE;
    }
    if (method == MP_MULTIFD_FLAG_NOCOMP) {
        guint64 want = (guint64)m->normal_pages * p->page_size;
        if (m->next_packet_size != want) {
            set_error(p, MP_PARSE_ERROR_LENGTH,
                      "packet %" G_GUINT64_FORMAT
                      " at offset %" G_GUINT64_FORMAT
                      " has next_packet_size %u (expected %u normal pages "
                      "x %u = %" G_GUINT64_FORMAT ")",
                      m->packet_num, p->rec_start, m->next_packet_size,
                      m->normal_pages, p->page_size, want);
            return FALSE;
        }
    } else if (m->next_packet_size == 0
               || m->next_packet_size > compressed_bound(method)) {
        set_error(p, MP_PARSE_ERROR_LENGTH,
                  "packet %" G_GUINT64_FORMAT " at offset %" G_GUINT64_FORMAT
                  " has next_packet_size %u for %u %s pages (expected "
                  "1..%u)",
                  m->packet_num, p->rec_start, m->next_packet_size,
                  m->normal_pages, method_name(method),
                  compressed_bound(method));
        return FALSE;
    }
    return TRUE;
}

/* Decodes and checks a RAM packet header (`rest`: after the common
 * bytes) into p->pkt. */
static gboolean
parse_ram_header(MpMfdParser *p, const guint8 *rest)
{
    const guint8 *block = field(rest, RAM_BLOCK);
    MpMfdInfo *m = &p->pkt;

    memset(m, 0, sizeof(*m));
    m->flags = p->pkt_flags;
    m->pages_alloc = mp_be32(field(rest, RAM_PAGES_ALLOC));
    m->normal_pages = mp_be32(field(rest, RAM_NORMAL_PAGES));
    m->next_packet_size = mp_be32(field(rest, RAM_NEXT_PACKET_SIZE));
    m->packet_num = mp_be64(field(rest, RAM_PACKET_NUM));
    m->zero_pages = mp_be32(field(rest, RAM_ZERO_PAGES));
    m->offsets = p->offsets;
    /* stale when the packet has no pages; still a C string */
    memcpy(p->name, block, 256);
    p->name[256] = 0;
    m->block = p->name;
    if (!check_ram_pages(p, block, field(rest, RAM_OFFSETS)))
        return FALSE;
    if (m->normal_pages && !check_ram_method(p))
        return FALSE;
    p->last_packet_num = MAX(p->last_packet_num, m->packet_num);
    p->have_packet_num = TRUE;
    return TRUE;
}

/* Decodes and checks a device-state packet header (`rest`: after the
 * common bytes) into p->pkt. */
static gboolean
parse_device_header(MpMfdParser *p, const guint8 *rest)
{
    const guint8 *idstr = field(rest, DEV_IDSTR);
    MpMfdInfo *m = &p->pkt;

    memset(m, 0, sizeof(*m));
    m->flags = p->pkt_flags;
    if (!memchr(idstr, 0, 256)) {
        set_error(p, MP_PARSE_ERROR_MULTIFD,
                  "device-state packet at offset %" G_GUINT64_FORMAT
                  " has an idstr without NUL in its 256 bytes",
                  p->rec_start);
        return FALSE;
    }
    memcpy(p->name, idstr, 256);
    p->name[256] = 0;
    m->block = p->name;
    m->instance_id = mp_be32(field(rest, DEV_INSTANCE_ID));
    m->next_packet_size = mp_be32(field(rest, DEV_NEXT_PACKET_SIZE));
    if (m->next_packet_size > MFD_MAX_DEVICE_STATE) {
        set_error(p, MP_PARSE_ERROR_LENGTH,
                  "device-state packet \"%s\" at offset %" G_GUINT64_FORMAT
                  " has next_packet_size %u (expected at most %u)",
                  p->name, p->rec_start, m->next_packet_size,
                  MFD_MAX_DEVICE_STATE);
        return FALSE;
    }
    return TRUE;
}

/* Prepares the decoder and its output for the current packet. */
static gboolean
zstd_start_packet(MpMfdParser *p)
{
    if (!p->zds) {
        p->zds = ZSTD_createDStream();
        if (!p->zds || ZSTD_isError(ZSTD_initDStream(p->zds))
            || ZSTD_isError(ZSTD_DCtx_setParameter(p->zds, ZSTD_d_windowLogMax,
                                                   MFD_ZSTD_WINDOW_LOG_MAX))) {
            set_error(
                p, MP_PARSE_ERROR_DECODE,
                "cannot set up a zstd decoder for packet %" G_GUINT64_FORMAT
                " at offset %" G_GUINT64_FORMAT,
                p->pkt.packet_num, p->pkt_start);
            return FALSE;
        }
    }
    /* One byte of room more than the pages need exposes excess output. */
    p->out.size = (gsize)p->pkt.normal_pages * p->page_size + 1;
    p->out.pos = 0;
    if (p->dec_cap < p->out.size) {
        g_free(p->dec_buf);
        p->dec_buf = g_malloc(p->out.size);
        p->dec_cap = p->out.size;
    }
    p->out.dst = p->dec_buf;
    return TRUE;
}

static gboolean
zstd_error(MpMfdParser *p, size_t r)
{
    if (!ZSTD_isError(r))
        return FALSE;
    set_error(p, MP_PARSE_ERROR_DECODE,
              "zstd data of packet %" G_GUINT64_FORMAT
              " (at offset %" G_GUINT64_FORMAT
              ") is invalid in the chunk at offset %" G_GUINT64_FORMAT ": %s%s",
              p->pkt.packet_num, p->pkt_start, p->rec_start,
              ZSTD_getErrorName(r),
              ZSTD_getErrorCode(r) == ZSTD_error_frameParameter_windowTooLarge
                  ? " (more than the 2^25 bytes of window QEMU's highest "
                    "multifd-zstd-level uses)"
                  : "");
    return TRUE;
}

static gboolean
zstd_too_much(MpMfdParser *p)
{
    if (p->out.pos < p->out.size)
        return FALSE;
    set_error(p, MP_PARSE_ERROR_DECODE,
              "zstd data of packet %" G_GUINT64_FORMAT
              " (at offset %" G_GUINT64_FORMAT
              ") decodes to more than %u normal pages x %u bytes",
              p->pkt.packet_num, p->pkt_start, p->pkt.normal_pages,
              p->page_size);
    return TRUE;
}

/* Decodes one chunk of compressed bytes into the packet's pages. */
static gboolean
zstd_decode(MpMfdParser *p, const guint8 *d, gsize n)
{
    ZSTD_inBuffer in = {d, n, 0};

    while (in.pos < in.size) {
        gsize in_before = in.pos, out_before = p->out.pos;
        size_t r = ZSTD_decompressStream(p->zds, &p->out, &in);
        if (zstd_error(p, r) || zstd_too_much(p))
            return FALSE;
        if (in.pos == in_before && p->out.pos == out_before) {
            /* libzstd progresses while it has room and input; never spin */
            set_error(p, MP_PARSE_ERROR_DECODE,
                      "zstd decoder stalled in packet %" G_GUINT64_FORMAT
                      " (at offset %" G_GUINT64_FORMAT
                      ") in the chunk at offset %" G_GUINT64_FORMAT,
                      p->pkt.packet_num, p->pkt_start, p->rec_start);
            return FALSE;
        }
    }
    return TRUE;
}

/* All of the packet's bytes went in: flush, and check the page count. */
static gboolean
zstd_end_packet(MpMfdParser *p)
{
    static const guint8 none;
    ZSTD_inBuffer in = {&none, 0, 0};
    gsize before;

    do {
        before = p->out.pos;
        size_t r = ZSTD_decompressStream(p->zds, &p->out, &in);
        if (zstd_error(p, r) || zstd_too_much(p))
            return FALSE;
    } while (p->out.pos != before);
    if (p->out.pos != p->out.size - 1) {
        set_error(p, MP_PARSE_ERROR_DECODE,
                  "zstd data of packet %" G_GUINT64_FORMAT
                  " (at offset %" G_GUINT64_FORMAT
                  ") decodes to %zu bytes (expected %u normal pages x %u)",
                  p->pkt.packet_num, p->pkt_start, p->out.pos,
                  p->pkt.normal_pages, p->page_size);
        return FALSE;
    }
    return TRUE;
}

/* Where to go after a packet header, for p->pkt. */
static gboolean
start_packet_body(MpMfdParser *p)
{
    MpMfdInfo *m = &p->pkt;
    guint32 method = m->flags & MP_MULTIFD_FLAG_COMPRESS_MASK;

    p->page_i = 0;
    p->decoding = FALSE;
    if (p->device_state) {
        p->data_left = m->next_packet_size;
        p->state = p->data_left ? M_DATA : M_COMMON;
        if (p->data_left && !p->chunk_acc.buf)
            mp_accum_init(&p->chunk_acc, MFD_DATA_CHUNK);
        return TRUE;
    }
    m->pages_follow = TRUE;
    if (m->normal_pages == 0) {
        /* no data, even if next_packet_size is not 0 (stale) */
        p->state = m->zero_pages ? M_PAGES_OUT : M_COMMON;
        return TRUE;
    }
    if (method == MP_MULTIFD_FLAG_NOCOMP) {
        p->state = M_PAGE;
        return TRUE;
    }
    p->data_left = m->next_packet_size;
    p->state = M_DATA;
    if (!p->chunk_acc.buf)
        mp_accum_init(&p->chunk_acc, MFD_DATA_CHUNK);
    if (method == MP_MULTIFD_FLAG_ZSTD && p->decode) {
        p->decoding = TRUE;
        return zstd_start_packet(p);
    }
    m->pages_follow = FALSE;
    return TRUE;
}

/* @return what the parser reads in state `s`. */
static const char *
mfd_state_name(MfdState s)
{
    switch (s) {
    case M_INIT:
        return "the 64-byte init";
    case M_COMMON:
    case M_RAM_HDR:
    case M_DEV_HDR:
        return "a packet header";
    case M_PAGE:
        return "normal page";
    case M_DATA:
        return "packet data";
    case M_PAGES_OUT:
        break;
    }
    return "decoded and zero pages";
}

/* Says where in its grammar the parser is, for a truncation error. */
static const char *
describe_position(const MpMfdParser *p, GString *s)
{
    const char *name = mfd_state_name(p->state);
    gsize have = p->hdr_acc.have;

    switch (p->state) {
    case M_INIT:
        g_string_printf(s, "%s (%zu bytes read)", name, have);
        break;
    case M_COMMON:
        g_string_printf(s, "%s (%zu of %d bytes read)", name, have,
                        MFD_COMMON_HDR);
        break;
    case M_RAM_HDR:
        g_string_printf(s, "%s (%zu of %zu bytes read)", name,
                        MFD_COMMON_HDR + have, p->ram_hdr_size);
        break;
    case M_DEV_HDR:
        g_string_printf(s, "%s (%zu of %d bytes read)", name,
                        MFD_COMMON_HDR + have, MP_MULTIFD_DEVICE_STATE_HDR);
        break;
    case M_PAGE:
        g_string_printf(s, "%s %u of %u of packet %" G_GUINT64_FORMAT, name,
                        p->page_i + 1, p->pkt.normal_pages, p->pkt.packet_num);
        break;
    case M_DATA:
    case M_PAGES_OUT:
        if (p->device_state)
            g_string_printf(s,
                            "the %u bytes of device state \"%s\" "
                            "(%" G_GUINT64_FORMAT " missing)",
                            p->pkt.next_packet_size, p->name,
                            p->data_left - p->chunk_acc.have);
        else
            g_string_printf(
                s,
                "the %u bytes of %s data of packet %" G_GUINT64_FORMAT
                " (%" G_GUINT64_FORMAT " missing)",
                p->pkt.next_packet_size,
                method_name(p->pkt.flags & MP_MULTIFD_FLAG_COMPRESS_MASK),
                p->pkt.packet_num, p->data_left - p->chunk_acc.have);
        break;
    }
    return s->str;
}

static MfdStep
read_init(MpMfdParser *p, MpCursor *in, MpRecord *rec)
{
    const guint8 *d;

    if (p->hdr_acc.have == 0)
        p->rec_start = p->pkt_start = mp_cursor_offset(in);
    if (!(d = mp_accum_take(&p->hdr_acc, MP_MULTIFD_INIT_SIZE, in)))
        return MS_SHORT;
    if (!check_init(p, d))
        return MS_ERROR;
    rec->kind = MP_REC_MFD_INIT;
    rec->u.mfd.channel_id = d[24];
    rec->u.mfd.uuid = d + 8;
    p->state = M_COMMON;
    return MS_EMIT;
}

/* magic, version and flags: which kind of packet this is. */
static MfdStep
read_common(MpMfdParser *p, MpCursor *in)
{
    const guint8 *d;

    if (p->hdr_acc.have == 0)
        p->rec_start = p->pkt_start = mp_cursor_offset(in);
    if (!(d = mp_accum_take(&p->hdr_acc, MFD_COMMON_HDR, in)))
        return MS_SHORT;
    if (!check_common(p, d))
        return MS_ERROR;
    p->pkt_flags = mp_be32(d + 8);
    p->device_state = !!(p->pkt_flags & MP_MULTIFD_FLAG_DEVICE_STATE);
    p->state = p->device_state ? M_DEV_HDR : M_RAM_HDR;
    return MS_NEXT;
}

static MfdStep
read_ram_hdr(MpMfdParser *p, MpCursor *in, MpRecord *rec)
{
    const guint8 *d;

    d = mp_accum_take(&p->hdr_acc, p->ram_hdr_size - MFD_COMMON_HDR, in);
    if (!d)
        return MS_SHORT;
    if (!parse_ram_header(p, d) || !start_packet_body(p))
        return MS_ERROR;
    rec->kind = MP_REC_MFD_PACKET;
    rec->u.mfd = p->pkt;
    return MS_EMIT;
}

static MfdStep
read_dev_hdr(MpMfdParser *p, MpCursor *in, MpRecord *rec)
{
    const guint8 *d;

    d = mp_accum_take(&p->hdr_acc, MP_MULTIFD_DEVICE_STATE_HDR - MFD_COMMON_HDR,
                      in);
    if (!d)
        return MS_SHORT;
    if (!parse_device_header(p, d) || !start_packet_body(p))
        return MS_ERROR;
    rec->kind = MP_REC_MFD_DEVICE_STATE;
    rec->u.mfd = p->pkt;
    return MS_EMIT;
}

/* nocomp: one normal page, spanned on the wire. */
static MfdStep
read_page(MpMfdParser *p, MpCursor *in, MpRecord *rec)
{
    const guint8 *d;

    if (p->page_acc.have == 0)
        p->rec_start = mp_cursor_offset(in);
    if (!(d = mp_accum_take(&p->page_acc, p->page_size, in)))
        return MS_SHORT;
    rec->kind = MP_REC_MFD_PAGE;
    rec->u.mfd = p->pkt;
    rec->u.mfd.addr = mp_be64(p->pkt.offsets + 8 * p->page_i);
    rec->u.mfd.data = d;
    p->page_i++;
    if (p->page_i == p->pkt.normal_pages)
        p->state = p->pkt.zero_pages ? M_PAGES_OUT : M_COMMON;
    return MS_EMIT;
}

/* One chunk of compressed or device-state bytes (decoded if zstd). */
static MfdStep
read_data(MpMfdParser *p, MpCursor *in, MpRecord *rec)
{
    gsize want = MIN(MFD_DATA_CHUNK, p->data_left);
    const guint8 *d;

    if (p->chunk_acc.have == 0)
        p->rec_start = mp_cursor_offset(in);
    if (!(d = mp_accum_take(&p->chunk_acc, want, in)))
        return MS_SHORT;
    p->data_left -= want;
    if (p->decoding && !zstd_decode(p, d, want))
        return MS_ERROR;
    if (p->data_left == 0) {
        if (p->decoding && !zstd_end_packet(p))
            return MS_ERROR;
        p->state = p->decoding ? M_PAGES_OUT : M_COMMON;
    }
    rec->kind = MP_REC_MFD_DATA;
    rec->u.mfd = p->pkt;
    rec->u.mfd.data = d;
    return MS_EMIT;
}

/* One decoded or zero page: a view, no bytes on the wire. */
static MfdStep
pages_out(MpMfdParser *p, MpCursor *in, MpRecord *rec)
{
    guint32 i = p->page_i++;

    p->rec_start = mp_cursor_offset(in);
    rec->kind = MP_REC_MFD_PAGE;
    rec->u.mfd = p->pkt;
    rec->u.mfd.addr = mp_be64(p->pkt.offsets + 8 * i);
    if (i < p->pkt.normal_pages)
        rec->u.mfd.data = p->dec_buf + (gsize)i * p->page_size;
    else
        rec->u.mfd.zero = TRUE;
    if (p->page_i == p->pkt.normal_pages + p->pkt.zero_pages)
        p->state = M_COMMON;
    return MS_EMIT;
}

/* Runs the function of the current state. */
static MfdStep
read_state(MpMfdParser *p, MpCursor *in, MpRecord *rec)
{
    switch (p->state) {
    case M_INIT:
        return read_init(p, in, rec);
    case M_COMMON:
        return read_common(p, in);
    case M_RAM_HDR:
        return read_ram_hdr(p, in, rec);
    case M_DEV_HDR:
        return read_dev_hdr(p, in, rec);
    case M_PAGE:
        return read_page(p, in, rec);
    case M_DATA:
        return read_data(p, in, rec);
    case M_PAGES_OUT:
        return pages_out(p, in, rec);
    }
    g_assert_not_reached();
}

/* The parser's feed, outside a resync. */
static MpFeedStatus
feed_plain(gpointer parser, const guint8 *buf, gsize len, gsize *consumed,
           GError **error)
{
    MpMfdParser *p = parser;
    MpCursor in = {.buf = buf, .pos = buf, .end = buf + len, .off = p->off};
    MpFeedStatus status = MP_FEED_MORE;
    MpRecord rec;

    *consumed = 0;
    if (p->error) {
        if (error)
            *error = g_error_copy(p->error);
        return MP_FEED_ERROR;
    }

    for (;;) {
        /* every state but the pages owed reads input */
        if (in.pos == in.end && p->state != M_PAGES_OUT)
            break;
        memset(&rec, 0, sizeof(rec));
        switch (read_state(p, &in, &rec)) {
        case MS_NEXT:
            continue;
        case MS_SHORT:
            goto out;
        case MS_EMIT:
            rec.offset = p->rec_start;
            rec.length = mp_cursor_offset(&in) - p->rec_start;
            if (p->cb(&rec, p->user_data) == MP_REC_PAUSE) {
                status = MP_FEED_PAUSED;
                goto out;
            }
            continue;
        case MS_ERROR:
            goto error;
        }
    }

out:
    *consumed = in.pos - buf;
    p->off += *consumed;
    return status;

error:
    *consumed = in.pos - buf;
    p->off += *consumed;
    if (error)
        *error = g_error_copy(p->error);
    return MP_FEED_ERROR;
}

/* ---- after a gap: the next packet header ---- */

/* A RAMBlock name or device idstr: NUL-terminated within its 256 bytes,
 * not empty, printable (QEMU's are ASCII). */
static gboolean
plausible_name(const guint8 *name)
{
    const guint8 *nul = memchr(name, 0, 256);

    if (!nul || nul == name)
        return FALSE;
    for (const guint8 *c = name; c < nul; c++)
        if (*c < 0x20 || *c >= 0x7f)
            return FALSE;
    return TRUE;
}

/* A packet header at `b`, checked as the parser checks one and against
 * what the channel showed before the gap: its packet numbers (they only
 * grow) and its compression method. */
static MpProbeResult
probe_packet(gconstpointer parser, const guint8 *b, gsize len, guint64 off,
             const char **what, int *kind)
{
    static const guint8 magic[4] = {0x11, 0x22, 0x33, 0x44};
    const guint32 known = MP_MULTIFD_FLAG_SYNC | MP_MULTIFD_FLAG_COMPRESS_MASK
                          | MP_MULTIFD_FLAG_DEVICE_STATE;
    const MpMfdParser *p = parser;

    (void)off;
    *kind = 0;
    if (memcmp(b, magic, MIN(len, sizeof(magic))) != 0)
        return MP_PROBE_NO;
    if (len < MFD_COMMON_HDR)
        return MP_PROBE_MORE;
    guint32 flags = mp_be32(b + 8);
    guint32 method = flags & MP_MULTIFD_FLAG_COMPRESS_MASK;
    if (mp_be32(b + 4) != MP_MULTIFD_VERSION || (flags & ~known)
        || !method_name(method))
        return MP_PROBE_NO;
    if (flags & MP_MULTIFD_FLAG_DEVICE_STATE) {
        if (len < MP_MULTIFD_DEVICE_STATE_HDR)
            return MP_PROBE_MORE;
        if (!plausible_name(b + DEV_IDSTR)
            || mp_be32(b + DEV_NEXT_PACKET_SIZE) > MFD_MAX_DEVICE_STATE)
            return MP_PROBE_NO;
        *what = "multifd device-state packet header";
        return MP_PROBE_YES;
    }
    if (len < p->ram_hdr_size)
        return MP_PROBE_MORE;
    guint32 alloc = mp_be32(b + RAM_PAGES_ALLOC);
    guint32 normal = mp_be32(b + RAM_NORMAL_PAGES);
    guint32 next = mp_be32(b + RAM_NEXT_PACKET_SIZE);
    guint64 num = mp_be64(b + RAM_PACKET_NUM);
    guint64 pages = (guint64)normal + mp_be32(b + RAM_ZERO_PAGES);
    if (alloc > p->page_count || pages > alloc)
        return MP_PROBE_NO;
    if (p->have_packet_num && num <= p->last_packet_num)
        return MP_PROBE_NO;
    if (pages && !plausible_name(b + RAM_BLOCK))
        return MP_PROBE_NO;
    for (guint64 i = 0; i < pages; i++)
        if (mp_be64(b + RAM_OFFSETS + 8 * i) & (p->page_size - 1))
            return MP_PROBE_NO;
    if (normal) {
        if (p->have_method && method != p->method)
            return MP_PROBE_NO;
        if (method == MP_MULTIFD_FLAG_NOCOMP
                ? next != (guint64)normal * p->page_size
                : next == 0 || next > compressed_bound(method))
            return MP_PROBE_NO;
    }
    *what = "multifd packet header";
    return MP_PROBE_YES;
}

/* A packet header starts at rec->offset: read it from there. */
static MpRecordAction
resume_packet(gpointer parser, MpRecord *rec, int kind)
{
    MpMfdParser *p = parser;

    (void)kind;
    p->state = M_COMMON;
    p->off = p->rec_start = p->pkt_start = rec->offset;
    /* a compressed channel is one zstd stream whose history before the
     * gap is lost: later packets are counted (normal_pages), not
     * decoded */
    if (p->decode) {
        p->decode = FALSE;
        ZSTD_freeDStream(p->zds);
        p->zds = NULL;
    }
    return p->cb(rec, p->user_data);
}

static const MpResyncOps resync_ops = {
    .probe = probe_packet,
    .resume = resume_packet,
    .feed = feed_plain,
};

gboolean
mp_mfd_parser_gap(MpMfdParser *p, guint64 len)
{
    if (p->error)
        return FALSE;
    /* the packet being read is abandoned */
    p->state = M_COMMON;
    p->hdr_acc.have = 0;
    p->page_acc.have = 0;
    p->chunk_acc.have = 0;
    mp_resync_gap(&p->rs, p->off, len);
    p->off += len;
    return TRUE;
}

MpFeedStatus
mp_mfd_parser_feed(MpMfdParser *p, const guint8 *buf, gsize len,
                   gsize *consumed, GError **error)
{
    if (p->error || !mp_resync_active(&p->rs))
        return feed_plain(p, buf, len, consumed, error);
    return mp_resync_feed(&p->rs, &resync_ops, p, &p->off, buf, len,
                          consumed, error);
}

gboolean
mp_mfd_parser_finish(MpMfdParser *p, GError **error)
{
    static const guint8 none;
    gsize used;

    /* ended while looking for a packet after a gap: the owner, who told
     * the gap, tells that it never resumed */
    if (!p->error && mp_resync_finish(&p->rs))
        return TRUE;
    /* pages owed after a pause need no input: deliver them */
    while (!p->error && p->state == M_PAGES_OUT)
        mp_mfd_parser_feed(p, &none, 0, &used, NULL);
    if (p->error) {
        if (error)
            *error = g_error_copy(p->error);
        return FALSE;
    }
    if ((p->state == M_COMMON || p->state == M_INIT) && p->hdr_acc.have == 0)
        return TRUE;

    g_autoptr(GString) what = g_string_new(NULL);
    mp_parse_error_set(error, p->channel, MP_PARSE_ERROR_TRUNCATED,
                       "channel closed at offset %" G_GUINT64_FORMAT
                       " inside %s (%s at offset %" G_GUINT64_FORMAT ")",
                       p->off, describe_position(p, what),
                       p->state == M_INIT ? "init" : "packet", p->pkt_start);
    return FALSE;
}
