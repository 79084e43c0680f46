/* stream-input.c: the stream inside a file: plain, zstd, or a libvirt save
 * image, decompressed on the fly through the compression libraries (never
 * external programs). */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <bzlib.h>
#include <lzma.h>
#include <lzo/lzo1x.h>
#include <zlib.h>
#include <zstd.h>
#include <gio/gio.h>
#include "qcow2.h"
#include "stream-input.h"

#define ZSTD_MAGIC 0xfd2fb528u /* little-endian on disk: 28 b5 2f fd */
#define COMPRESSED_CHUNK (128u << 10)

typedef enum {
    DEC_NONE,
    DEC_ZSTD,
    DEC_GZIP,
    DEC_BZIP2,
    DEC_XZ,
    DEC_LZOP,
} Decoder;

/* lzop's container (lzop's own format around LZO1X blocks): a header,
 * then blocks of be32 decompressed length (0 ends the file), be32
 * compressed length, optional checksums, the data. */
#define LZOP_MAGIC_LEN 9
static const guint8 lzop_magic[LZOP_MAGIC_LEN] = {0x89, 'L',  'Z',  'O', 0,
                                                  '\r', '\n', 0x1a, '\n'};
#define LZOP_F_ADLER32_D 0x1u
#define LZOP_F_ADLER32_C 0x2u
#define LZOP_F_EXTRA     0x40u
#define LZOP_F_CRC32_D   0x100u
#define LZOP_F_CRC32_C   0x200u
#define LZOP_F_FILTER    0x800u

typedef struct {
    GByteArray *acc; /* the bytes of the field being gathered */
    gsize need;      /* how many it needs */
    enum {
        LZ_MAGIC,
        LZ_VERSIONS,
        LZ_METHOD,
        LZ_FLAGS,
        LZ_FILTER,
        LZ_MODE_MTIME,
        LZ_NAME_LEN,
        LZ_NAME_CSUM,
        LZ_EXTRA_LEN,
        LZ_EXTRA,
        LZ_BLOCK_LEN,
        LZ_BLOCK_CSUMS,
        LZ_BLOCK_DATA,
        LZ_DONE,
    } st;
    guint16 version;
    guint32 flags;
    guint32 dst_len, src_len, adler_d;
    guint8 *out; /* a decompressed block not yet handed out */
    gsize out_len, out_pos;
    guint64 offset; /* of the container, for errors */
} Lzop;

struct MpInput {
    char *path;
    int fd;
    guint64 size;
    guint64 start; /* where the (compressed) stream starts in the file */
    Decoder dec;
    ZSTD_DStream *zs;
    z_stream gz;
    bz_stream bz;
    lzma_stream xz;
    Lzop lz;
    gboolean dec_ready; /* gz/bz/xz: initialised for the current member */
    guint8 *zbuf;       /* compressed bytes read ahead */
    gsize zcap, zpos, zlen;
    gboolean eof;
    gboolean frame_open; /* inside a frame: a clean end needs it closed */
    MpLibvirtImage *libvirt;
    /* a qcow2 snapshot's VM state: read through the image's tables */
    MpQcow2 *qcow2;
    char *snapshot;
    guint64 qpos;
};

static const char *const dec_names[] = {NULL, "zstd", "gzip", "bzip2", "xz",
                                        "lzop"};

static gboolean
decoder_for_libvirt(MpInput *in, GError **error)
{
    switch (in->libvirt->format) {
    case MP_LIBVIRT_RAW:
        in->dec = DEC_NONE;
        return TRUE;
    case MP_LIBVIRT_GZIP:
        in->dec = DEC_GZIP;
        return TRUE;
    case MP_LIBVIRT_BZIP2:
        in->dec = DEC_BZIP2;
        return TRUE;
    case MP_LIBVIRT_XZ:
        in->dec = DEC_XZ;
        return TRUE;
    case MP_LIBVIRT_LZOP:
        in->dec = DEC_LZOP;
        return TRUE;
    case MP_LIBVIRT_ZSTD:
        in->dec = DEC_ZSTD;
        return TRUE;
    default:
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_NOT_SUPPORTED,
                    "%s: libvirt save image of format \"%s\": its "
                    "mapped-ram stream at offset %" G_GUINT64_FORMAT
                    " is not a sequential stream",
                    in->path, mp_libvirt_format_name(in->libvirt->format),
                    in->start);
        return FALSE;
    }
}

MpInput *
mp_input_open(const char *path, GError **error)
{
    g_autoptr(MpInput) in = g_new0(MpInput, 1);
    struct stat st;
    guint8 magic[16];

    in->path = g_strdup(path);
    in->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (in->fd < 0) {
        int e = errno;
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(e),
                    "%s: cannot open: %s", path, g_strerror(e));
        return NULL;
    }
    if (fstat(in->fd, &st) == 0)
        in->size = st.st_size;
    if (S_ISDIR(st.st_mode)) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_IS_DIRECTORY,
                    "%s: cannot read: is a directory", path);
        return NULL;
    }
    posix_fadvise(in->fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    gssize got = pread(in->fd, magic, sizeof(magic), 0);
    if (got >= 16 && mp_libvirt_is_image(magic, got)) {
        in->libvirt = mp_libvirt_image_read(in->fd, path, in->size, error);
        if (!in->libvirt)
            return NULL;
        in->start = in->libvirt->data_offset;
        if (!decoder_for_libvirt(in, error))
            return NULL;
        if (lseek(in->fd, in->start, SEEK_SET) < 0) {
            int e = errno;
            g_set_error(error, G_IO_ERROR, g_io_error_from_errno(e),
                        "%s: cannot seek: %s", path, g_strerror(e));
            return NULL;
        }
    } else if (got >= 4
               && (magic[0] | magic[1] << 8 | magic[2] << 16
                   | (guint32)magic[3] << 24)
                      == ZSTD_MAGIC) {
        in->dec = DEC_ZSTD;
    }
    if (in->dec == DEC_ZSTD) {
        in->zs = ZSTD_createDStream();
        /* the window a frame may ask for, and so the decoder's memory: 2^27
         * (128 MiB), libzstd's default, said here because the bound is
         * documented (README); zstd --long and levels 20-22 need it */
        ZSTD_DCtx_setParameter(in->zs, ZSTD_d_windowLogMax,
                               MP_INPUT_ZSTD_WINDOW_LOG_MAX);
        in->zcap = ZSTD_DStreamInSize();
    } else if (in->dec != DEC_NONE) {
        in->zcap = COMPRESSED_CHUNK;
    }
    if (in->dec == DEC_LZOP) {
        in->lz.acc = g_byte_array_new();
        in->lz.need = LZOP_MAGIC_LEN;
        in->lz.offset = in->start;
        if (lzo_init() != LZO_E_OK) {
            g_set_error(error, G_IO_ERROR, G_IO_ERROR_FAILED,
                        "%s: liblzo2 failed to initialise", path);
            return NULL;
        }
    }
    if (in->zcap)
        in->zbuf = g_malloc(in->zcap);
    return g_steal_pointer(&in);
}

static void
decoder_end(MpInput *in)
{
    if (!in->dec_ready)
        return;
    if (in->dec == DEC_GZIP)
        inflateEnd(&in->gz);
    else if (in->dec == DEC_BZIP2)
        BZ2_bzDecompressEnd(&in->bz);
    else if (in->dec == DEC_XZ)
        lzma_end(&in->xz);
    in->dec_ready = FALSE;
}

MpInput *
mp_input_open_snapshot(const char *path, const char *snapshot, GError **error)
{
    g_autoptr(MpInput) in = g_new0(MpInput, 1);

    in->path = g_strdup(path);
    in->fd = -1;
    in->qcow2 = mp_qcow2_open(path, error);
    if (!in->qcow2)
        return NULL;
    const MpQcow2Snapshot *s = mp_qcow2_find(in->qcow2, snapshot);
    if (!s) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_NOT_FOUND,
                    "%s: no snapshot named \"%s\" (migproxy analyze %s "
                    "lists them)",
                    path, snapshot, path);
        return NULL;
    }
    if (!mp_qcow2_select(in->qcow2, s, error))
        return NULL;
    in->snapshot = g_strdup(snapshot);
    in->size = mp_qcow2_state_size(in->qcow2);
    return g_steal_pointer(&in);
}

void
mp_input_free(MpInput *in)
{
    if (!in)
        return;
    mp_qcow2_free(in->qcow2);
    g_free(in->snapshot);
    if (in->fd >= 0)
        close(in->fd);
    decoder_end(in);
    ZSTD_freeDStream(in->zs);
    if (in->lz.acc)
        g_byte_array_free(in->lz.acc, TRUE);
    g_free(in->lz.out);
    mp_libvirt_image_free(in->libvirt);
    g_free(in->zbuf);
    g_free(in->path);
    g_free(in);
}

gboolean
mp_input_is_compressed(const MpInput *in)
{
    return in->dec != DEC_NONE;
}

const char *
mp_input_compression(const MpInput *in)
{
    return dec_names[in->dec];
}

const MpLibvirtImage *
mp_input_libvirt(const MpInput *in)
{
    return in->libvirt;
}

guint64
mp_input_file_size(const MpInput *in)
{
    return in->size;
}

static gssize
read_fd(MpInput *in, guint8 *buf, gsize cap, GError **error)
{
    if (in->qcow2) {
        gssize n = mp_qcow2_pread(in->qcow2, buf, cap, in->qpos, error);
        if (n > 0)
            in->qpos += n;
        return n;
    }
    for (;;) {
        gssize n = read(in->fd, buf, cap);
        if (n >= 0)
            return n;
        if (errno == EINTR)
            continue;
        int e = errno;
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(e),
                    "%s: read failed: %s", in->path, g_strerror(e));
        return -1;
    }
}

/* Offset in the file of the next compressed byte, for errors. */
static guint64
zoffset(const MpInput *in)
{
    off_t at = lseek(in->fd, 0, SEEK_CUR);
    return at < 0 ? 0 : (guint64)at - (in->zlen - in->zpos);
}

static gboolean
bad_data(MpInput *in, GError **error, const char *what)
{
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                "%s: %s data near offset %" G_GUINT64_FORMAT ": %s", in->path,
                dec_names[in->dec], zoffset(in), what);
    return FALSE;
}

/* --- one step of each decoder: input from zbuf[zpos, zlen), output to
 * out[*pos, cap); frame_open says whether a member is unfinished. */

static gboolean
step_zstd(MpInput *in, guint8 *out, gsize cap, gsize *pos, GError **error)
{
    ZSTD_inBuffer zin = {in->zbuf, in->zlen, in->zpos};
    ZSTD_outBuffer zout = {out, cap, *pos};
    size_t r = ZSTD_decompressStream(in->zs, &zout, &zin);
    in->zpos = zin.pos;
    *pos = zout.pos;
    if (ZSTD_isError(r))
        return bad_data(in, error, ZSTD_getErrorName(r));
    in->frame_open = r != 0;
    return TRUE;
}

static gboolean
step_gzip(MpInput *in, guint8 *out, gsize cap, gsize *pos, GError **error)
{
    if (!in->dec_ready) {
        memset(&in->gz, 0, sizeof(in->gz));
        /* 16 + 15: a gzip member with the largest window */
        if (inflateInit2(&in->gz, 16 + MAX_WBITS) != Z_OK)
            return bad_data(in, error, "zlib failed to initialise");
        in->dec_ready = TRUE;
    }
    in->gz.next_in = in->zbuf + in->zpos;
    in->gz.avail_in = MIN(in->zlen - in->zpos, G_MAXUINT32);
    in->gz.next_out = out + *pos;
    in->gz.avail_out = MIN(cap - *pos, G_MAXUINT32);
    int r = inflate(&in->gz, Z_NO_FLUSH);
    in->zpos = in->gz.next_in - in->zbuf;
    *pos = in->gz.next_out - out;
    if (r == Z_STREAM_END) {
        /* gzip files may hold several members, one after the other */
        decoder_end(in);
        in->frame_open = FALSE;
        return TRUE;
    }
    if (r != Z_OK && r != Z_BUF_ERROR)
        return bad_data(in, error, in->gz.msg ? in->gz.msg : "inflate failed");
    in->frame_open = TRUE;
    return TRUE;
}

static gboolean
step_bzip2(MpInput *in, guint8 *out, gsize cap, gsize *pos, GError **error)
{
    if (!in->dec_ready) {
        memset(&in->bz, 0, sizeof(in->bz));
        if (BZ2_bzDecompressInit(&in->bz, 0, 0) != BZ_OK)
            return bad_data(in, error, "libbz2 failed to initialise");
        in->dec_ready = TRUE;
    }
    in->bz.next_in = (char *)in->zbuf + in->zpos;
    in->bz.avail_in = MIN(in->zlen - in->zpos, G_MAXUINT32);
    in->bz.next_out = (char *)out + *pos;
    in->bz.avail_out = MIN(cap - *pos, G_MAXUINT32);
    int r = BZ2_bzDecompress(&in->bz);
    in->zpos = (guint8 *)in->bz.next_in - in->zbuf;
    *pos = (guint8 *)in->bz.next_out - out;
    if (r == BZ_STREAM_END) {
        decoder_end(in); /* pbzip2 writes several streams */
        in->frame_open = FALSE;
        return TRUE;
    }
    if (r != BZ_OK) {
        char what[32];
        g_snprintf(what, sizeof(what), "libbz2 error %d", r);
        return bad_data(in, error, what);
    }
    in->frame_open = TRUE;
    return TRUE;
}

static const char *
lzma_what(lzma_ret r)
{
    switch (r) {
    case LZMA_MEMLIMIT_ERROR:
        return "needs more memory than the decoder's bound (128 MiB)";
    case LZMA_FORMAT_ERROR:
        return "not xz data";
    case LZMA_OPTIONS_ERROR:
        return "unsupported options";
    case LZMA_DATA_ERROR:
        return "corrupt data";
    case LZMA_BUF_ERROR:
        return "truncated";
    default:
        return "liblzma error";
    }
}

static gboolean
step_xz(MpInput *in, guint8 *out, gsize cap, gsize *pos, GError **error)
{
    if (!in->dec_ready) {
        lzma_stream init = LZMA_STREAM_INIT;
        in->xz = init;
        lzma_ret r = lzma_stream_decoder(&in->xz, MP_INPUT_XZ_MEMLIMIT, 0);
        if (r != LZMA_OK)
            return bad_data(in, error, lzma_what(r));
        in->dec_ready = TRUE;
    }
    in->xz.next_in = in->zbuf + in->zpos;
    in->xz.avail_in = in->zlen - in->zpos;
    in->xz.next_out = out + *pos;
    in->xz.avail_out = cap - *pos;
    lzma_ret r = lzma_code(&in->xz, LZMA_RUN);
    in->zpos = in->xz.next_in - in->zbuf;
    *pos = in->xz.next_out - out;
    if (r == LZMA_STREAM_END) {
        decoder_end(in);
        in->frame_open = FALSE;
        return TRUE;
    }
    if (r != LZMA_OK && r != LZMA_BUF_ERROR)
        return bad_data(in, error, lzma_what(r));
    in->frame_open = TRUE;
    return TRUE;
}

static guint32
be32(const guint8 *p)
{
    return (guint32)p[0] << 24 | p[1] << 16 | p[2] << 8 | p[3];
}

/* Gathers lz->need bytes of the current field.  @return TRUE when whole. */
static gboolean
lzop_gather(MpInput *in)
{
    Lzop *lz = &in->lz;
    gsize take = MIN(lz->need - lz->acc->len, in->zlen - in->zpos);
    g_byte_array_append(lz->acc, in->zbuf + in->zpos, take);
    in->zpos += take;
    lz->offset += take;
    return lz->acc->len == lz->need;
}

static gboolean
lzop_bad(MpInput *in, GError **error, const char *what)
{
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                "%s: lzop data at offset %" G_GUINT64_FORMAT ": %s",
                in->path, in->lz.offset - in->lz.acc->len, what);
    return FALSE;
}

static void
lzop_next(Lzop *lz, int st, gsize need)
{
    g_byte_array_set_size(lz->acc, 0);
    lz->st = st;
    lz->need = need;
}

/* The container's fields, in order; decoded blocks go out through
 * lz->out. */
static gboolean
step_lzop(MpInput *in, guint8 *out, gsize cap, gsize *pos, GError **error)
{
    Lzop *lz = &in->lz;

    if (lz->out_pos < lz->out_len) {
        gsize n = MIN(cap - *pos, lz->out_len - lz->out_pos);
        memcpy(out + *pos, lz->out + lz->out_pos, n);
        *pos += n;
        lz->out_pos += n;
        return TRUE;
    }
    in->frame_open = lz->st != LZ_DONE;
    if (lz->st == LZ_DONE) {
        if (in->zpos < in->zlen)
            return lzop_bad(in, error, "bytes after the end mark");
        return TRUE;
    }
    if (!lzop_gather(in))
        return TRUE;
    const guint8 *d = lz->acc->data;
    switch (lz->st) {
    case LZ_MAGIC:
        if (memcmp(d, lzop_magic, LZOP_MAGIC_LEN) != 0)
            return lzop_bad(in, error, "not an lzop file (magic)");
        lzop_next(lz, LZ_VERSIONS, 4);
        break;
    case LZ_VERSIONS:
        lz->version = d[0] << 8 | d[1];
        /* from 0.9.40 on: version needed to extract, then method, level */
        lzop_next(lz, LZ_METHOD, lz->version >= 0x0940 ? 4 : 1);
        break;
    case LZ_METHOD: {
        guint8 method = lz->version >= 0x0940 ? d[2] : d[0];
        if (method < 1 || method > 3) /* LZO1X-1, LZO1X-1(15), LZO1X-999 */
            return lzop_bad(in, error, "not an LZO1X method");
        lzop_next(lz, LZ_FLAGS, 4);
        break;
    }
    case LZ_FLAGS:
        lz->flags = be32(d);
        if (lz->flags & LZOP_F_FILTER)
            lzop_next(lz, LZ_FILTER, 4);
        else
            lzop_next(lz, LZ_MODE_MTIME, lz->version >= 0x0940 ? 12 : 8);
        break;
    case LZ_FILTER:
        return lzop_bad(in, error, "lzop filters are not supported");
    case LZ_MODE_MTIME:
        lzop_next(lz, LZ_NAME_LEN, 1);
        break;
    case LZ_NAME_LEN:
        lzop_next(lz, LZ_NAME_CSUM, d[0] + 4u);
        break;
    case LZ_NAME_CSUM:
        if (lz->flags & LZOP_F_EXTRA)
            lzop_next(lz, LZ_EXTRA_LEN, 4);
        else
            lzop_next(lz, LZ_BLOCK_LEN, 4);
        break;
    case LZ_EXTRA_LEN:
        if (be32(d) > (1u << 20))
            return lzop_bad(in, error, "extra field longer than 1 MiB");
        lzop_next(lz, LZ_EXTRA, be32(d) + 4u);
        break;
    case LZ_EXTRA:
        lzop_next(lz, LZ_BLOCK_LEN, 4);
        break;
    case LZ_BLOCK_LEN:
        if (lz->need == 4) {
            lz->dst_len = be32(d);
            if (lz->dst_len == 0) {
                lzop_next(lz, LZ_DONE, 0);
                in->frame_open = FALSE;
                break;
            }
            if (lz->dst_len > MP_INPUT_LZOP_BLOCK_MAX)
                return lzop_bad(in, error, "block longer than 64 MiB");
            lz->need = 8; /* and the compressed length */
            break;
        }
        lz->src_len = be32(d + 4);
        if (lz->src_len == 0 || lz->src_len > lz->dst_len)
            return lzop_bad(in, error,
                            "compressed length 0 or above the block's length");
        {
            gsize sums = 0;
            if (lz->flags & LZOP_F_ADLER32_D)
                sums += 4;
            if (lz->flags & LZOP_F_CRC32_D)
                sums += 4;
            if (lz->src_len < lz->dst_len) {
                if (lz->flags & LZOP_F_ADLER32_C)
                    sums += 4;
                if (lz->flags & LZOP_F_CRC32_C)
                    sums += 4;
            }
            lzop_next(lz, LZ_BLOCK_CSUMS, sums);
            if (sums)
                break;
        }
        G_GNUC_FALLTHROUGH; /* no checksums */
    case LZ_BLOCK_CSUMS:
        /* the decompressed data's adler32 comes first when present */
        lz->adler_d = (lz->flags & LZOP_F_ADLER32_D) && lz->acc->len
                          ? be32(lz->acc->data)
                          : 0;
        lzop_next(lz, LZ_BLOCK_DATA, lz->src_len);
        break;
    case LZ_BLOCK_DATA: {
        g_free(lz->out);
        lz->out = g_malloc(lz->dst_len);
        lzo_uint n = lz->dst_len;
        if (lz->src_len == lz->dst_len) {
            memcpy(lz->out, d, n); /* stored: it did not compress */
        } else if (lzo1x_decompress_safe(d, lz->src_len, lz->out, &n, NULL)
                       != LZO_E_OK
                   || n != lz->dst_len) {
            return lzop_bad(in, error, "corrupt LZO1X block");
        }
        if ((lz->flags & LZOP_F_ADLER32_D)
            && adler32(1, lz->out, lz->dst_len) != lz->adler_d)
            return lzop_bad(in, error, "block checksum (adler32) mismatch");
        lz->out_len = lz->dst_len;
        lz->out_pos = 0;
        lzop_next(lz, LZ_BLOCK_LEN, 4);
        break;
    }
    case LZ_DONE:
        break;
    }
    return TRUE;
}

gssize
mp_input_read(MpInput *in, guint8 *buf, gsize cap, GError **error)
{
    if (in->dec == DEC_NONE)
        return read_fd(in, buf, cap, error);

    gsize pos = 0;
    while (pos == 0) {
        gboolean pending_out = in->dec == DEC_LZOP
                               && in->lz.out_pos < in->lz.out_len;
        if (in->zpos == in->zlen && !pending_out) {
            if (in->eof)
                break;
            gssize n = read_fd(in, in->zbuf, in->zcap, error);
            if (n < 0)
                return -1;
            if (n == 0) {
                in->eof = TRUE;
                if (in->frame_open || (in->dec == DEC_LZOP
                                       && in->lz.st != LZ_DONE)) {
                    g_set_error(error, G_IO_ERROR, G_IO_ERROR_PARTIAL_INPUT,
                                "%s: the %s data is truncated at offset "
                                "%" G_GUINT64_FORMAT,
                                in->path, dec_names[in->dec], in->size);
                    return -1;
                }
                break;
            }
            in->zlen = n;
            in->zpos = 0;
        }
        gboolean ok;
        switch (in->dec) {
        case DEC_ZSTD:
            ok = step_zstd(in, buf, cap, &pos, error);
            break;
        case DEC_GZIP:
            ok = step_gzip(in, buf, cap, &pos, error);
            break;
        case DEC_BZIP2:
            ok = step_bzip2(in, buf, cap, &pos, error);
            break;
        case DEC_XZ:
            ok = step_xz(in, buf, cap, &pos, error);
            break;
        default:
            ok = step_lzop(in, buf, cap, &pos, error);
            break;
        }
        if (!ok)
            return -1;
    }
    return pos;
}

static GBytes *tail_of(MpInput *in, gsize max, GError **error);

GBytes *
mp_input_read_tail(const char *path, gsize max, GError **error)
{
    g_autoptr(MpInput) in = mp_input_open(path, error);
    return in ? tail_of(in, max, error) : NULL;
}

GBytes *
mp_input_reread_tail(const MpInput *orig, gsize max, GError **error)
{
    g_autoptr(MpInput) in =
        orig->snapshot ? mp_input_open_snapshot(orig->path, orig->snapshot,
                                                error)
                       : mp_input_open(orig->path, error);
    return in ? tail_of(in, max, error) : NULL;
}

static GBytes *
tail_of(MpInput *in, gsize max, GError **error)
{
    const char *path = in->path;

    if (in->qcow2) {
        gsize n = MIN(max, in->size);
        guint8 *buf = g_malloc(MAX(n, 1));
        gssize got = mp_qcow2_pread(in->qcow2, buf, n, in->size - n, error);
        if (got != (gssize)n) {
            if (got >= 0)
                g_set_error(error, G_IO_ERROR, G_IO_ERROR_FAILED,
                            "%s: cannot read the last %zu bytes", path, n);
            g_free(buf);
            return NULL;
        }
        return g_bytes_new_take(buf, n);
    }
    if (in->dec == DEC_NONE) {
        gsize n = MIN(max, in->size - in->start);
        guint8 *buf = g_malloc(n);
        gssize got = pread(in->fd, buf, n, in->size - n);
        if (got != (gssize)n) {
            g_set_error(error, G_IO_ERROR, G_IO_ERROR_FAILED,
                        "%s: cannot read the last %zu bytes", path, n);
            g_free(buf);
            return NULL;
        }
        return g_bytes_new_take(buf, n);
    }

    /* compressed: keep the last `max` bytes in a ring while decompressing */
    guint8 *ring = g_malloc(max);
    gsize head = 0, filled = 0;
    guint8 *chunk = g_malloc(1 << 20);
    gssize n;
    while ((n = mp_input_read(in, chunk, 1 << 20, error)) > 0) {
        const guint8 *src = chunk;
        if ((gsize)n > max) {
            src += n - max;
            n = max;
        }
        for (gssize done = 0; done < n;) {
            gsize part = MIN((gsize)(n - done), max - head);
            memcpy(ring + head, src + done, part);
            head = (head + part) % max;
            done += part;
        }
        filled = MIN(filled + n, max);
    }
    g_free(chunk);
    if (n < 0) {
        g_free(ring);
        return NULL;
    }
    guint8 *tail = g_malloc(filled);
    gsize start = (head + max - filled) % max;
    for (gsize i = 0; i < filled; i++)
        tail[i] = ring[(start + i) % max];
    g_free(ring);
    return g_bytes_new_take(tail, filled);
}

/* Reading (and faulting in) 16 MiB up front cost 14 % of a 1.2 GB
 * `analyze` summary; a q35 guest's vmdesc is 44 KiB. */
#define VMDESC_FIRST (256u << 10)

/* Reads the last `max` bytes of `src` (a path or an MpInput). */
typedef GBytes *(*TailFunc)(gconstpointer src, gsize max);

static GBytes *
tail_of_path(gconstpointer src, gsize max)
{
    return mp_input_read_tail(src, max, NULL);
}

static GBytes *
tail_of_input(gconstpointer src, gsize max)
{
    return mp_input_reread_tail(src, max, NULL);
}

static MpVmdesc *
find_vmdesc(TailFunc read_tail, gconstpointer src, gboolean compressed,
            GError **error)
{
    gsize max = compressed ? MP_INPUT_VMDESC_SEARCH : VMDESC_FIRST;

    for (;; max = MIN(max * 8, MP_INPUT_VMDESC_SEARCH)) {
        g_autoptr(GBytes) tail = read_tail(src, max);
        gsize off, len, size;

        if (!tail)
            return NULL;
        const guint8 *t = g_bytes_get_data(tail, &size);
        if (mp_vmdesc_locate(t, size, &off, &len))
            return mp_vmdesc_new((const char *)t + off, len, error);
        if (size < max || max == MP_INPUT_VMDESC_SEARCH)
            return NULL; /* the whole file, or as far as we look */
    }
}

MpVmdesc *
mp_input_find_vmdesc(const char *path, gboolean compressed, GError **error)
{
    return find_vmdesc(tail_of_path, path, compressed, error);
}

MpVmdesc *
mp_input_find_vmdesc_of(const MpInput *in, GError **error)
{
    return find_vmdesc(tail_of_input, in, mp_input_is_compressed(in), error);
}
