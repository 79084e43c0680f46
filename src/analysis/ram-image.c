/* ram-image.c: RAM images on disk.
 *
 * Writes are gathered into iovec runs of consecutive pages and issued with
 * pwritev, so a bulk round costs a few syscalls per megabyte, not one per
 * page.  Zero pages write nothing unless the page had been written before
 * (the files start sparse, all zero), which a per-block bitmap tells.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>
#include <zlib.h>
#include <gio/gio.h>
#include <json-c/json.h>
#include "out-file.h"
#include "ram-image.h"
#include "xbzrle.h"

#define RUN_MAX     256            /* iovecs per pwritev (< IOV_MAX) */
#define STAGE_PAGES 256            /* copies of pages not in the buffer */

typedef struct {
    char *name;
    char *file;
    int fd;
    guint64 size;
    guint8 *written; /* bit per page: has non-zero content been written */
} Block;

struct MpRamImage {
    char *dir;
    int dirfd; /* files are created in it, never through a link */
    GHashTable *blocks; /* name -> Block* */
    GPtrArray *order;   /* Block*, in stream order */
    Block *last;        /* block of the last page: the next one's, mostly */
    guint32 page_size;

    const guint8 *buf;
    gsize buf_len;

    /* one pending run: consecutive pages of one block */
    Block *run_block;
    guint64 run_addr, run_next;
    struct iovec iov[RUN_MAX];
    int iovcnt;

    guint8 *stage; /* STAGE_PAGES pages */
    guint stage_used;
    guint8 *zero_page;
    guint8 *work; /* one page for XBZRLE and decompression */
};

char *
mp_ram_image_file_name(const char *block)
{
    while (*block == '/')
        block++;
    char *s = g_strdup(*block ? block : "_");
    for (char *c = s; *c; c++)
        if (*c == '/')
            *c = '_';
    return s;
}

static void
block_free(gpointer data)
{
    Block *b = data;
    if (b->fd >= 0)
        close(b->fd);
    g_free(b->name);
    g_free(b->file);
    g_free(b->written);
    g_free(b);
}

MpRamImage *
mp_ram_image_new(const char *dir, GError **error)
{
    /* guest memory: 0700 if created here (an existing directory is used
     * as it is, its new files are 0600) */
    int dirfd = mp_out_dir_open(dir, FALSE, error);
    if (dirfd < 0) {
        g_prefix_error(error, "--dump-ram: ");
        return NULL;
    }
    MpRamImage *img = g_new0(MpRamImage, 1);
    img->dir = g_strdup(dir);
    img->dirfd = dirfd;
    img->blocks = g_hash_table_new(g_str_hash, g_str_equal);
    img->order = g_ptr_array_new_with_free_func(block_free);
    img->page_size = MP_TARGET_PAGE_SIZE;
    img->stage = g_malloc(STAGE_PAGES * img->page_size);
    img->zero_page = g_malloc0(img->page_size);
    img->work = g_malloc(img->page_size);
    return img;
}

void
mp_ram_image_free(MpRamImage *img)
{
    if (!img)
        return;
    g_hash_table_destroy(img->blocks);
    g_ptr_array_free(img->order, TRUE);
    g_free(img->stage);
    g_free(img->zero_page);
    g_free(img->work);
    g_free(img->dir);
    close(img->dirfd);
    g_free(img);
}

void
mp_ram_image_set_buffer(MpRamImage *img, const guint8 *buf, gsize len)
{
    img->buf = buf;
    img->buf_len = len;
}

static gboolean
io_fail(Block *b, const char *what, GError **error)
{
    int e = errno;
    g_set_error(error, G_IO_ERROR, g_io_error_from_errno(e),
                "--dump-ram: %s %s: %s", what, b->file, g_strerror(e));
    return FALSE;
}

gboolean
mp_ram_image_flush(MpRamImage *img, GError **error)
{
    Block *b = img->run_block;
    if (b && img->iovcnt) {
        struct iovec *iov = img->iov;
        int cnt = img->iovcnt;
        off_t off = img->run_addr;
        while (cnt > 0) {
            ssize_t n = pwritev(b->fd, iov, cnt, off);
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                return io_fail(b, "writing", error);
            }
            if (n == 0) {
                /* (nothing written and no error: it would loop forever) */
                errno = ENOSPC;
                return io_fail(b, "writing", error);
            }
            off += n;
            while (cnt > 0 && (size_t)n >= iov->iov_len) {
                n -= iov->iov_len;
                iov++;
                cnt--;
            }
            if (cnt > 0 && n > 0) {
                iov->iov_base = (guint8 *)iov->iov_base + n;
                iov->iov_len -= n;
            }
        }
    }
    img->iovcnt = 0;
    img->run_block = NULL;
    img->stage_used = 0;
    return TRUE;
}

/* TRUE if a page at (b, addr) cannot join the pending run. */
static gboolean
breaks_run(const MpRamImage *img, const Block *b, guint64 addr)
{
    return img->run_block && (img->run_block != b || img->run_next != addr
                              || img->iovcnt == RUN_MAX);
}

/* Queues `data` (one page) for block b at addr; data must stay valid
 * until the next flush. */
static gboolean
queue_page(MpRamImage *img, Block *b, guint64 addr, const guint8 *data,
           GError **error)
{
    if (breaks_run(img, b, addr) && !mp_ram_image_flush(img, error))
        return FALSE;
    if (!img->run_block) {
        img->run_block = b;
        img->run_addr = addr;
    }
    img->iov[img->iovcnt].iov_base = (void *)data;
    img->iov[img->iovcnt].iov_len = img->page_size;
    img->iovcnt++;
    img->run_next = addr + img->page_size;
    return TRUE;
}

/* A page that is not in the feed buffer gets a stable copy.  Flushing
 * empties the staging area, so it happens before a slot is taken: a slot
 * in use is never handed out again. */
static gboolean
queue_copy(MpRamImage *img, Block *b, guint64 addr, const guint8 *data,
           GError **error)
{
    if ((img->stage_used == STAGE_PAGES || breaks_run(img, b, addr))
        && !mp_ram_image_flush(img, error))
        return FALSE;
    guint8 *slot = img->stage + (gsize)img->stage_used++ * img->page_size;
    memcpy(slot, data, img->page_size);
    return queue_page(img, b, addr, slot, error);
}

static gboolean
in_buffer(const MpRamImage *img, const guint8 *p, gsize len)
{
    return img->buf && p >= img->buf && p + len <= img->buf + img->buf_len;
}

static Block *
add_block(MpRamImage *img, const char *name, guint64 size, GError **error)
{
    Block *b = g_hash_table_lookup(img->blocks, name);
    if (b)
        return b;
    b = g_new0(Block, 1);
    b->name = g_strdup(name);
    g_autofree char *base = mp_ram_image_file_name(name);
    b->file = g_build_filename(img->dir, base, NULL);
    b->size = size;
    /* an image left by an earlier run is removed, not written into: a
     * link (or a hard link) planted in its place keeps its target */
    if (unlinkat(img->dirfd, base, 0) < 0 && errno != ENOENT) {
        io_fail(b, "removing the earlier", error);
        block_free(b);
        return NULL;
    }
    b->fd = openat(img->dirfd, base,
                   O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (b->fd < 0 || fchmod(b->fd, 0600) < 0 || ftruncate(b->fd, size) < 0) {
        io_fail(b, "creating", error);
        block_free(b);
        return NULL;
    }
    /* The size is the stream's word: only after the file system took it
     * (its largest file bounds this map), and without aborting if even
     * that is more than this machine has */
    b->written = g_try_malloc0(size / img->page_size / 8 + 1);
    if (!b->written) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_NO_SPACE,
                    "--dump-ram: RAM block %s claims %" G_GUINT64_FORMAT
                    " bytes, too many to track here",
                    name, size);
        unlinkat(img->dirfd, base, 0);
        block_free(b);
        return NULL;
    }
    g_hash_table_insert(img->blocks, b->name, b);
    g_ptr_array_add(img->order, b);
    return b;
}

static gboolean
bit_test_set(guint8 *map, guint64 i, gboolean value)
{
    gboolean old = (map[i / 8] >> (i % 8)) & 1;
    if (value)
        map[i / 8] |= 1u << (i % 8);
    else
        map[i / 8] &= ~(1u << (i % 8));
    return old;
}

/* Reads the current content of a page (flushing queued writes first). */
static gboolean
read_page(MpRamImage *img, Block *b, guint64 addr, guint8 *out, GError **error)
{
    if (!mp_ram_image_flush(img, error))
        return FALSE;
    ssize_t n = pread(b->fd, out, img->page_size, addr);
    if (n != (ssize_t)img->page_size)
        return io_fail(b, "reading", error);
    return TRUE;
}

static gboolean
apply_page(MpRamImage *img, const char *block, guint64 addr, MpPageKind kind,
           const guint8 *payload, guint32 len, GError **error)
{
    /* one-entry cache: hashing the name of every page was a third of
     * the user-space instructions of --dump-ram */
    Block *b = img->last;
    if (!b || strcmp(b->name, block) != 0)
        b = img->last = g_hash_table_lookup(img->blocks, block);
    if (!b) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_NOT_FOUND,
                    "--dump-ram: page for RAMBlock \"%s\", which the block "
                    "list did not announce", block);
        return FALSE;
    }
    if (addr + img->page_size > b->size) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                    "--dump-ram: page 0x%" G_GINT64_MODIFIER
                    "x past the end of \"%s\"", addr, block);
        return FALSE;
    }
    guint64 idx = addr / img->page_size;

    switch (kind) {
    case MP_PAGE_NORMAL:
        bit_test_set(b->written, idx, TRUE);
        if (in_buffer(img, payload, len))
            return queue_page(img, b, addr, payload, error);
        return queue_copy(img, b, addr, payload, error);
    case MP_PAGE_ZERO:
        if (payload && payload[0]) {
            memset(img->work, payload[0], img->page_size);
            bit_test_set(b->written, idx, TRUE);
            return queue_copy(img, b, addr, img->work, error);
        }
        /* the file is already zero there unless something was written */
        if (!bit_test_set(b->written, idx, FALSE))
            return TRUE;
        return queue_page(img, b, addr, img->zero_page, error);
    case MP_PAGE_XBZRLE:
        if (!read_page(img, b, addr, img->work, error))
            return FALSE;
        if (!mp_xbzrle_apply(img->work, img->page_size, payload, len)) {
            g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                        "--dump-ram: malformed XBZRLE page");
            return FALSE;
        }
        bit_test_set(b->written, idx, TRUE);
        return queue_copy(img, b, addr, img->work, error);
    case MP_PAGE_COMPRESSED: {
        uLongf out_len = img->page_size;
        int zr = uncompress(img->work, &out_len, payload, len);
        if (zr != Z_OK || out_len != img->page_size) {
            g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                        "--dump-ram: compressed page 0x%" G_GINT64_MODIFIER
                        "x of \"%s\" does not inflate to one page (zlib %d)",
                        addr, block, zr);
            return FALSE;
        }
        bit_test_set(b->written, idx, TRUE);
        return queue_copy(img, b, addr, img->work, error);
    }
    default:
        return TRUE;
    }
}

gboolean
mp_ram_image_record(MpRamImage *img, const MpRecord *rec, GError **error)
{
    switch (rec->kind) {
    case MP_REC_RAM_BLOCK:
        return add_block(img, rec->u.block.name, rec->u.block.used_length,
                         error) != NULL;
    case MP_REC_RAM_PAGE:
        return apply_page(img, rec->u.page.block, rec->u.page.addr,
                          rec->u.page.kind, rec->u.page.payload,
                          rec->u.page.payload_len, error);
    case MP_REC_MFD_PAGE:
        if (!rec->u.mfd.zero && !rec->u.mfd.data)
            return TRUE; /* undecoded compressed data: nothing to apply */
        return apply_page(img, rec->u.mfd.block, rec->u.mfd.addr,
                          rec->u.mfd.zero ? MP_PAGE_ZERO : MP_PAGE_NORMAL,
                          rec->u.mfd.data, img->page_size, error);
    default:
        return TRUE;
    }
}

gboolean
mp_ram_image_close(MpRamImage *img, GError **error)
{
    if (!mp_ram_image_flush(img, error))
        return FALSE;
    json_object *arr = json_object_new_array();
    for (guint i = 0; i < img->order->len; i++) {
        Block *b = g_ptr_array_index(img->order, i);
        json_object *o = json_object_new_object();
        g_autofree char *base = g_path_get_basename(b->file);
        json_object_object_add(o, "name", json_object_new_string(b->name));
        json_object_object_add(o, "file", json_object_new_string(base));
        json_object_object_add(o, "size", json_object_new_int64(b->size));
        json_object_array_add(arr, o);
        if (b->fd >= 0 && close(b->fd) < 0) {
            b->fd = -1;
            json_object_put(arr);
            return io_fail(b, "closing", error);
        }
        b->fd = -1;
    }
    const char *text =
        json_object_to_json_string_ext(arr, JSON_C_TO_STRING_PRETTY);
    gboolean ok = mp_out_file_replace(img->dirfd, "index.json", text,
                                      strlen(text), error);
    if (!ok)
        g_prefix_error(error, "--dump-ram %s: ", img->dir);
    json_object_put(arr);
    return ok;
}
