/* qcow2.c: reads a qcow2 image's snapshot table and a snapshot's VM state
 * through its L1 and L2 tables (plain, zero, unallocated and compressed
 * clusters; extended L2 entries), never more than a table and a cluster at
 * a time. */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>
#include <gio/gio.h>
#include "qcow2.h"

#define QCOW2_MAGIC 0x514649fbu /* "QFI\xfb" */
/* incompatible features */
#define INCOMPAT_DIRTY       (1u << 0)
#define INCOMPAT_CORRUPT     (1u << 1)
#define INCOMPAT_DATA_FILE   (1u << 2)
#define INCOMPAT_COMPRESSION (1u << 3)
#define INCOMPAT_EXTL2       (1u << 4)
#define INCOMPAT_KNOWN       0x1fu
#define ENTRY_OFFSET_MASK    0x00fffffffffffe00ull
#define L2_COMPRESSED        (1ull << 62)
#define L2_ZERO              1ull

struct MpQcow2 {
    char *path;
    int fd;
    guint64 file_size;
    guint32 version;
    guint32 cluster_bits;
    guint64 cluster_size;
    guint64 disk_size;
    gboolean extended_l2;
    gboolean zstd; /* compression type 1 */
    guint l2_bits; /* log2 of the entries in an L2 table */
    GPtrArray *snapshots; /* MpQcow2Snapshot* */

    /* the selected snapshot's VM state */
    guint64 *l1; /* host byte order */
    guint32 l1_size;
    guint64 state_base; /* virtual offset where the VM state starts */
    guint64 state_size;
    guint8 *l2; /* one L2 table, the one at l2_at */
    guint64 l2_at;
    guint8 *cluster; /* one decompressed cluster, of l2 entry cluster_at */
    guint64 cluster_at;
    guint8 *cbuf; /* compressed bytes of a cluster */
};

static guint64
be64(const guint8 *p)
{
    return GUINT64_FROM_BE(*(const guint64 *)(const void *)p);
}

static guint32
be32(const guint8 *p)
{
    return (guint32)p[0] << 24 | p[1] << 16 | p[2] << 8 | p[3];
}

static guint16
be16(const guint8 *p)
{
    return p[0] << 8 | p[1];
}

static gboolean
read_at(MpQcow2 *q, void *buf, gsize len, guint64 off, const char *what,
        GError **error)
{
    guint8 *p = buf;
    guint64 at = off;
    while (len) {
        gssize n = pread(q->fd, p, len, at);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            g_set_error(error, G_IO_ERROR,
                        n < 0 ? g_io_error_from_errno(errno)
                              : G_IO_ERROR_PARTIAL_INPUT,
                        "%s: qcow2 %s at offset %" G_GUINT64_FORMAT ": %s",
                        q->path, what, off,
                        n < 0 ? g_strerror(errno) : "past the file's end");
            return FALSE;
        }
        p += n;
        at += n;
        len -= n;
    }
    return TRUE;
}

static void
snapshot_free(gpointer p)
{
    MpQcow2Snapshot *s = p;
    g_free(s->id);
    g_free(s->name);
    g_free(s);
}

void
mp_qcow2_free(MpQcow2 *q)
{
    if (!q)
        return;
    if (q->fd >= 0)
        close(q->fd);
    if (q->snapshots)
        g_ptr_array_free(q->snapshots, TRUE);
    g_free(q->l1);
    g_free(q->l2);
    g_free(q->cluster);
    g_free(q->cbuf);
    g_free(q->path);
    g_free(q);
}

static gboolean
bad(MpQcow2 *q, GError **error, GIOErrorEnum code, const char *fmt, ...)
    G_GNUC_PRINTF(4, 5);

static gboolean
bad(MpQcow2 *q, GError **error, GIOErrorEnum code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_set_error(error, G_IO_ERROR, code, "%s: qcow2 %s", q->path, msg);
    return FALSE;
}

/* The snapshot table: entries of 40 bytes, extra data, id and name,
 * each padded to 8 bytes. */
static gboolean
read_snapshots(MpQcow2 *q, guint32 count, guint64 offset, GError **error)
{
    q->snapshots = g_ptr_array_new_with_free_func(snapshot_free);
    if (!count)
        return TRUE;
    if (count > MP_QCOW2_SNAPSHOTS_MAX)
        return bad(q, error, G_IO_ERROR_INVALID_DATA,
                   "snapshot count %u at offset 60 (at most %u)", count,
                   MP_QCOW2_SNAPSHOTS_MAX);
    if (offset % 8 || offset >= q->file_size)
        return bad(q, error, G_IO_ERROR_INVALID_DATA,
                   "snapshot table offset %" G_GUINT64_FORMAT
                   " at offset 64 (expected 8-aligned, inside the file of %"
                   G_GUINT64_FORMAT " bytes)",
                   offset, q->file_size);
    gsize len = MIN(q->file_size - offset, MP_QCOW2_SNAPSHOT_TABLE_MAX);
    g_autofree guint8 *t = g_malloc(len);
    if (!read_at(q, t, len, offset, "snapshot table", error))
        return FALSE;
    gsize at = 0;
    for (guint32 i = 0; i < count; i++) {
        if (len - at < 40)
            return bad(q, error, G_IO_ERROR_INVALID_DATA,
                       "snapshot %u at offset %" G_GUINT64_FORMAT
                       " runs past the table's end",
                       i, offset + at);
        const guint8 *e = t + at;
        guint32 extra = be32(e + 36);
        gsize entry = 40 + (gsize)extra + be16(e + 12) + be16(e + 14);
        if (extra > 1024 || len - at < entry)
            return bad(q, error, G_IO_ERROR_INVALID_DATA,
                       "snapshot %u at offset %" G_GUINT64_FORMAT
                       " runs past the table's end (extra data %u)",
                       i, offset + at, extra);
        MpQcow2Snapshot *s = g_new0(MpQcow2Snapshot, 1);
        s->l1_offset = be64(e);
        s->l1_size = be32(e + 8);
        s->date_sec = be32(e + 16);
        s->vm_clock_ns = be64(e + 24);
        s->vm_state_size = be32(e + 32);
        s->disk_size = q->disk_size;
        if (extra >= 8)
            s->vm_state_size = be64(e + 40);
        if (extra >= 16)
            s->disk_size = be64(e + 48);
        s->id = g_strndup((const char *)e + 40 + extra, be16(e + 12));
        s->name = g_strndup((const char *)e + 40 + extra + be16(e + 12),
                            be16(e + 14));
        g_ptr_array_add(q->snapshots, s);
        at += (entry + 7) & ~(gsize)7;
    }
    return TRUE;
}

MpQcow2 *
mp_qcow2_open(const char *path, GError **error)
{
    g_autoptr(MpQcow2) q = g_new0(MpQcow2, 1);
    guint8 h[112] = {0};
    struct stat st;

    q->path = g_strdup(path);
    q->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (q->fd < 0 || fstat(q->fd, &st) != 0) {
        int e = errno;
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(e),
                    "%s: cannot open: %s", path, g_strerror(e));
        return NULL;
    }
    q->file_size = st.st_size;
    if (!read_at(q, h, MIN(sizeof(h), MAX(q->file_size, 72)), 0, "header",
                 error))
        return NULL;
    if (be32(h) != QCOW2_MAGIC) {
        bad(q, error, G_IO_ERROR_INVALID_DATA, "magic at offset 0");
        return NULL;
    }
    q->version = be32(h + 4);
    if (q->version != 2 && q->version != 3) {
        bad(q, error, G_IO_ERROR_NOT_SUPPORTED,
            "version %u at offset 4 (expected 2 or 3)", q->version);
        return NULL;
    }
    q->cluster_bits = be32(h + 20);
    if (q->cluster_bits < 9 || q->cluster_bits > 21) {
        bad(q, error, G_IO_ERROR_INVALID_DATA,
            "cluster bits %u at offset 20 (expected 9 to 21)", q->cluster_bits);
        return NULL;
    }
    q->cluster_size = 1ull << q->cluster_bits;
    q->disk_size = be64(h + 24);
    if (be32(h + 32) != 0) {
        bad(q, error, G_IO_ERROR_NOT_SUPPORTED,
            "image is encrypted (method %u at offset 32): its VM state "
            "cannot be read without the key",
            be32(h + 32));
        return NULL;
    }
    if (q->version == 3) {
        guint64 incompat = be64(h + 72);
        guint32 hlen = be32(h + 100);
        if (incompat & ~(guint64)INCOMPAT_KNOWN) {
            bad(q, error, G_IO_ERROR_NOT_SUPPORTED,
                "incompatible features 0x%" G_GINT64_MODIFIER
                "x at offset 72 (known: 0x%x)",
                incompat, INCOMPAT_KNOWN);
            return NULL;
        }
        if (incompat & INCOMPAT_DATA_FILE) {
            bad(q, error, G_IO_ERROR_NOT_SUPPORTED,
                "image with an external data file (incompatible feature "
                "bit 2): not supported");
            return NULL;
        }
        q->extended_l2 = (incompat & INCOMPAT_EXTL2) != 0;
        if (incompat & INCOMPAT_COMPRESSION) {
            guint8 type = hlen > 104 ? h[104] : 0;
            if (type > 1) {
                bad(q, error, G_IO_ERROR_NOT_SUPPORTED,
                    "compression type %u at offset 104 (expected 0 zlib or "
                    "1 zstd)",
                    type);
                return NULL;
            }
            q->zstd = type == 1;
        }
    }
    q->l2_bits = q->cluster_bits - (q->extended_l2 ? 4 : 3);
    if (!read_snapshots(q, be32(h + 60), be64(h + 64), error))
        return NULL;
    return g_steal_pointer(&q);
}

guint
mp_qcow2_n_snapshots(const MpQcow2 *q)
{
    return q->snapshots->len;
}

const MpQcow2Snapshot *
mp_qcow2_snapshot(const MpQcow2 *q, guint i)
{
    return g_ptr_array_index(q->snapshots, i);
}

const MpQcow2Snapshot *
mp_qcow2_find(const MpQcow2 *q, const char *name)
{
    for (guint i = 0; i < q->snapshots->len; i++)
        if (strcmp(mp_qcow2_snapshot(q, i)->name, name) == 0)
            return mp_qcow2_snapshot(q, i);
    for (guint i = 0; i < q->snapshots->len; i++)
        if (strcmp(mp_qcow2_snapshot(q, i)->id, name) == 0)
            return mp_qcow2_snapshot(q, i);
    return NULL;
}

gboolean
mp_qcow2_select(MpQcow2 *q, const MpQcow2Snapshot *s, GError **error)
{
    guint64 span = 1ull << (q->cluster_bits + q->l2_bits);

    if (!s->vm_state_size)
        return bad(q, error, G_IO_ERROR_INVALID_DATA,
                   "snapshot \"%s\" holds no VM state (a disk-only snapshot)",
                   s->name);
    if ((guint64)s->l1_size * 8 > MP_QCOW2_L1_MAX || s->l1_offset % 8)
        return bad(q, error, G_IO_ERROR_INVALID_DATA,
                   "snapshot \"%s\": L1 table of %u entries at offset %"
                   G_GUINT64_FORMAT " (at most %u bytes, 8-aligned)",
                   s->name, s->l1_size, s->l1_offset, MP_QCOW2_L1_MAX);
    /* QEMU writes a VM state in plain clusters, so it is never larger
     * than its image; a state that claims far more (unallocated or shared
     * clusters read again and again) would cost time without bound */
    if (s->vm_state_size > 2 * q->file_size + MP_QCOW2_STATE_SLACK)
        return bad(q, error, G_IO_ERROR_INVALID_DATA,
                   "snapshot \"%s\": VM state of %" G_GUINT64_FORMAT
                   " bytes in an image of %" G_GUINT64_FORMAT
                   " (at most twice the image plus 64 MiB)",
                   s->name, s->vm_state_size, q->file_size);
    if (s->disk_size > G_MAXUINT64 - span || s->vm_state_size > G_MAXINT64)
        return bad(q, error, G_IO_ERROR_INVALID_DATA,
                   "snapshot \"%s\": disk size %" G_GUINT64_FORMAT
                   " or VM state size %" G_GUINT64_FORMAT " out of range",
                   s->name, s->disk_size, s->vm_state_size);
    g_free(q->l1);
    q->l1 = g_new(guint64, MAX(s->l1_size, 1));
    q->l1_size = s->l1_size;
    if (!read_at(q, q->l1, (gsize)s->l1_size * 8, s->l1_offset, "L1 table",
                 error))
        return FALSE;
    for (guint32 i = 0; i < s->l1_size; i++)
        q->l1[i] = GUINT64_FROM_BE(q->l1[i]);
    /* the VM state starts at the first L1 entry past the virtual disk
     * (where QEMU's qcow2 driver puts it) */
    q->state_base = (s->disk_size + span - 1) / span * span;
    q->state_size = s->vm_state_size;
    if (!q->l2) {
        q->l2 = g_malloc(q->cluster_size);
        q->cluster = g_malloc(q->cluster_size);
        q->cbuf = g_malloc(2 * q->cluster_size);
    }
    q->l2_at = q->cluster_at = G_MAXUINT64;
    return TRUE;
}

guint64
mp_qcow2_state_size(const MpQcow2 *q)
{
    return q->state_size;
}

/* A compressed cluster (entry `e`) into q->cluster. */
static gboolean
inflate_cluster(MpQcow2 *q, guint64 e, guint64 vaddr, GError **error)
{
    guint shift = 62 - (q->cluster_bits - 8);
    guint64 off = e & ((1ull << shift) - 1);
    guint64 sectors = ((e >> shift) & ((1ull << (q->cluster_bits - 8)) - 1)) + 1;
    gsize csize = sectors * 512 - (off & 511);

    csize = MIN(csize, 2 * q->cluster_size);
    if (off >= q->file_size)
        return bad(q, error, G_IO_ERROR_INVALID_DATA,
                   "compressed cluster of VM state offset %" G_GUINT64_FORMAT
                   " at file offset %" G_GUINT64_FORMAT " (past the file's end)",
                   vaddr, off);
    /* the last cluster of the file may claim sectors past its end */
    csize = MIN(csize, q->file_size - off);
    if (!read_at(q, q->cbuf, csize, off, "compressed cluster", error))
        return FALSE;
    gboolean ok;
    if (q->zstd) {
        ZSTD_DCtx *z = ZSTD_createDCtx();
        ZSTD_inBuffer in = {q->cbuf, csize, 0};
        ZSTD_outBuffer out = {q->cluster, q->cluster_size, 0};
        size_t r = 1;
        while (out.pos < out.size && in.pos < in.size && !ZSTD_isError(r))
            r = ZSTD_decompressStream(z, &out, &in);
        ok = !ZSTD_isError(r) && out.pos == out.size;
        ZSTD_freeDCtx(z);
    } else {
        /* raw deflate, a 4 KiB window (QEMU's qcow2_compress) */
        z_stream z = {0};
        ok = inflateInit2(&z, -12) == Z_OK;
        if (ok) {
            z.next_in = q->cbuf;
            z.avail_in = csize;
            z.next_out = q->cluster;
            z.avail_out = q->cluster_size;
            int r = inflate(&z, Z_FINISH);
            ok = (r == Z_STREAM_END || r == Z_BUF_ERROR || r == Z_OK)
                 && z.avail_out == 0;
            inflateEnd(&z);
        }
    }
    if (!ok)
        return bad(q, error, G_IO_ERROR_INVALID_DATA,
                   "compressed cluster at file offset %" G_GUINT64_FORMAT
                   " (VM state offset %" G_GUINT64_FORMAT
                   ") does not decompress to one cluster (%s)",
                   off, vaddr, q->zstd ? "zstd" : "zlib");
    return TRUE;
}

gssize
mp_qcow2_pread(MpQcow2 *q, guint8 *buf, gsize len, guint64 offset,
               GError **error)
{
    gsize done = 0;

    if (offset >= q->state_size)
        return 0;
    len = MIN(len, q->state_size - offset);
    while (done < len) {
        guint64 v = q->state_base + offset + done;
        guint64 in_cluster = v & (q->cluster_size - 1);
        gsize n = MIN(len - done, q->cluster_size - in_cluster);
        guint64 l1i = v >> (q->cluster_bits + q->l2_bits);
        guint64 l2i = (v >> q->cluster_bits) & ((1ull << q->l2_bits) - 1);
        guint64 l2_off = l1i < q->l1_size ? q->l1[l1i] & ENTRY_OFFSET_MASK : 0;

        if (!l2_off) {
            memset(buf + done, 0, n); /* unallocated: reads as zeros */
            done += n;
            continue;
        }
        if (l2_off % q->cluster_size)
            return bad(q, error, G_IO_ERROR_INVALID_DATA,
                       "L1 entry %" G_GUINT64_FORMAT
                       ": L2 table at unaligned offset %" G_GUINT64_FORMAT,
                       l1i, l2_off),
                   -1;
        if (q->l2_at != l2_off) {
            q->l2_at = G_MAXUINT64;
            if (!read_at(q, q->l2, q->cluster_size, l2_off, "L2 table",
                         error))
                return -1;
            q->l2_at = l2_off;
        }
        const guint8 *ent = q->l2 + (l2i << (q->extended_l2 ? 4 : 3));
        guint64 e = be64(ent);
        if (e & L2_COMPRESSED) {
            guint64 key = v - in_cluster;
            if (q->cluster_at != key) {
                q->cluster_at = G_MAXUINT64;
                if (!inflate_cluster(q, e, offset + done, error))
                    return -1;
                q->cluster_at = key;
            }
            memcpy(buf + done, q->cluster + in_cluster, n);
            done += n;
            continue;
        }
        guint64 host = e & ENTRY_OFFSET_MASK;
        if (q->extended_l2) {
            /* 32 subclusters: bit i allocated, bit 32 + i reads as zeros */
            guint64 bm = be64(ent + 8);
            guint64 sub = q->cluster_size / 32;
            guint s = in_cluster / sub;
            n = MIN(n, sub - in_cluster % sub);
            if ((bm >> (32 + s) & 1) || !(bm >> s & 1) || !host) {
                memset(buf + done, 0, n);
                done += n;
                continue;
            }
        } else if ((e & L2_ZERO) || !host) {
            memset(buf + done, 0, n);
            done += n;
            continue;
        }
        if (!read_at(q, buf + done, n, host + in_cluster, "data cluster",
                     error))
            return -1;
        done += n;
    }
    return done;
}

json_object *
mp_qcow2_to_json(const MpQcow2 *q)
{
    json_object *o = json_object_new_object(), *a = json_object_new_array();

    json_object_object_add(o, "version", json_object_new_int(q->version));
    json_object_object_add(o, "cluster_size",
                           json_object_new_uint64(q->cluster_size));
    json_object_object_add(o, "disk_size", json_object_new_uint64(q->disk_size));
    for (guint i = 0; i < q->snapshots->len; i++) {
        const MpQcow2Snapshot *s = mp_qcow2_snapshot(q, i);
        json_object *j = json_object_new_object();
        json_object_object_add(j, "id", json_object_new_string(s->id));
        json_object_object_add(j, "name", json_object_new_string(s->name));
        json_object_object_add(j, "vm_state_size",
                               json_object_new_uint64(s->vm_state_size));
        json_object_object_add(j, "disk_size",
                               json_object_new_uint64(s->disk_size));
        json_object_object_add(j, "date", json_object_new_uint64(s->date_sec));
        json_object_object_add(j, "vm_clock_ns",
                               json_object_new_uint64(s->vm_clock_ns));
        json_object_array_add(a, j);
    }
    json_object_object_add(o, "snapshots", a);
    return o;
}
