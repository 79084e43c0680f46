/* libvirt-image.c: reads and checks a libvirt save image's header and the
 * few facts of its domain XML a summary names. */
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <gio/gio.h>
#include "libvirt-image.h"

#define MAGIC_LEN 16u

static const char *const format_names[MP_LIBVIRT_FORMAT__MAX] = {
    "raw", "gzip", "bzip2", "xz", "lzop", "zstd", "sparse",
};

gboolean
mp_libvirt_is_image(const guint8 *buf, gsize len)
{
    return len >= MAGIC_LEN
           && (memcmp(buf, MP_LIBVIRT_MAGIC, MAGIC_LEN) == 0
               || memcmp(buf, MP_LIBVIRT_MAGIC_PART, MAGIC_LEN) == 0);
}

const char *
mp_libvirt_format_name(MpLibvirtFormat f)
{
    return (guint)f < MP_LIBVIRT_FORMAT__MAX ? format_names[f] : "?";
}

void
mp_libvirt_image_free(MpLibvirtImage *img)
{
    if (!img)
        return;
    g_free(img->xml);
    g_free(img->cookie);
    g_free(img->name);
    g_free(img->machine);
    g_free(img);
}

static gboolean
pread_all(int fd, void *buf, gsize len, guint64 off)
{
    guint8 *p = buf;
    while (len) {
        gssize n = pread(fd, p, len, off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return FALSE;
        p += n;
        off += n;
        len -= n;
    }
    return TRUE;
}

/* --- the domain XML: <name>, <memory unit=...>, <os><type machine=...> */

typedef struct {
    MpLibvirtImage *img;
    GString *text;
    guint depth;
    guint64 unit; /* of <memory> */
    enum { T_NONE, T_NAME, T_MEMORY } in;
    gboolean in_os;
} XmlCtx;

static guint64
memory_unit(const char *u)
{
    /* libvirt's scaled integers: KiB when no unit is given; "KB", "MB"...
     * are powers of 1000, "K", "KiB", "M", "MiB"... of 1024 */
    const char *letters = "KMGTPE", *l;
    guint64 scale = 1;

    if (!u)
        return 1024;
    if (g_ascii_strcasecmp(u, "b") == 0 || g_ascii_strcasecmp(u, "bytes") == 0)
        return 1;
    if (!u[0] || !(l = strchr(letters, g_ascii_toupper(u[0]))))
        return 0;
    gboolean decimal = g_ascii_strcasecmp(u + 1, "b") == 0;
    if (!decimal && u[1] && g_ascii_strcasecmp(u + 1, "ib") != 0)
        return 0;
    for (long i = 0; i <= l - letters; i++)
        scale *= decimal ? 1000 : 1024;
    return scale;
}

static void
xml_start(GMarkupParseContext *pc, const char *elem, const char **names,
          const char **values, gpointer user_data, GError **error)
{
    XmlCtx *x = user_data;

    x->depth++;
    x->in = T_NONE;
    if (x->depth == 2 && strcmp(elem, "name") == 0) {
        x->in = T_NAME;
    } else if (x->depth == 2 && strcmp(elem, "memory") == 0) {
        const char *unit = NULL;
        for (guint i = 0; names[i]; i++)
            if (strcmp(names[i], "unit") == 0)
                unit = values[i];
        x->unit = memory_unit(unit);
        x->in = T_MEMORY;
    } else if (x->depth == 2 && strcmp(elem, "os") == 0) {
        x->in_os = TRUE;
    } else if (x->depth == 3 && x->in_os && strcmp(elem, "type") == 0) {
        for (guint i = 0; names[i]; i++)
            if (strcmp(names[i], "machine") == 0 && !x->img->machine)
                x->img->machine = g_strdup(values[i]);
    }
    g_string_truncate(x->text, 0);
}

static void
xml_end(GMarkupParseContext *pc, const char *elem, gpointer user_data,
        GError **error)
{
    XmlCtx *x = user_data;

    if (x->in == T_NAME && !x->img->name)
        x->img->name = g_strdup(g_strstrip(x->text->str));
    if (x->in == T_MEMORY) {
        guint64 v;
        if (x->unit
            && g_ascii_string_to_unsigned(g_strstrip(x->text->str), 10, 0,
                                          G_MAXUINT64 / x->unit, &v, NULL))
            x->img->memory_bytes = v * x->unit;
    }
    if (x->depth == 2 && strcmp(elem, "os") == 0)
        x->in_os = FALSE;
    x->in = T_NONE;
    x->depth--;
}

static void
xml_text(GMarkupParseContext *pc, const char *text, gsize len,
         gpointer user_data, GError **error)
{
    XmlCtx *x = user_data;
    if (x->in != T_NONE && x->text->len < 4096)
        g_string_append_len(x->text, text, MIN(len, 4096));
}

/* The facts a summary names; a domain XML that glib's parser refuses
 * leaves them unset (the stream is still analyzed). */
static void
read_domain(MpLibvirtImage *img)
{
    static const GMarkupParser parser = {xml_start, xml_end, xml_text, NULL,
                                         NULL};
    XmlCtx x = {img, g_string_new(NULL), 0, 1024, T_NONE, FALSE};
    g_autoptr(GMarkupParseContext) pc =
        g_markup_parse_context_new(&parser, 0, &x, NULL);

    g_markup_parse_context_parse(pc, img->xml, strlen(img->xml), NULL);
    g_string_free(x.text, TRUE);
}

MpLibvirtImage *
mp_libvirt_image_read(int fd, const char *path, guint64 file_size,
                      GError **error)
{
    guint8 h[MP_LIBVIRT_HEADER_SIZE];
    g_autoptr(MpLibvirtImage) img = g_new0(MpLibvirtImage, 1);

    if (file_size < MP_LIBVIRT_HEADER_SIZE
        || !pread_all(fd, h, sizeof(h), 0)) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_PARTIAL_INPUT,
                    "%s: libvirt save image truncated in its header (%" G_GUINT64_FORMAT
                    " bytes, the header has %u)",
                    path, file_size, MP_LIBVIRT_HEADER_SIZE);
        return NULL;
    }
    if (!mp_libvirt_is_image(h, sizeof(h))) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                    "%s: not a libvirt save image (offset 0: expected \"%s\")",
                    path, MP_LIBVIRT_MAGIC);
        return NULL;
    }
    img->complete = memcmp(h, MP_LIBVIRT_MAGIC, MAGIC_LEN) == 0;

    guint32 w[5];
    memcpy(w, h + MAGIC_LEN, sizeof(w));
    guint32 version_read = w[0];
    /* the writer's byte order: libvirt swaps when the version reads
     * larger than any it knows */
    if (w[0] > MP_LIBVIRT_VERSION_MAX) {
        for (guint i = 0; i < 5; i++)
            w[i] = GUINT32_SWAP_LE_BE(w[i]);
        img->swapped = TRUE;
    }
    img->version = w[0];
    img->data_len = w[1];
    img->was_running = w[2] != 0;
    guint32 format = w[3], cookie_off = w[4];

    if (img->version < 1 || img->version > MP_LIBVIRT_VERSION_MAX) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_NOT_SUPPORTED,
                    "%s: libvirt save image version %u at offset 16 "
                    "(expected 1 or 2, in either byte order)",
                    path, version_read);
        return NULL;
    }
    /* version 1 images were never compressed: the field was not there */
    if (img->version == 2) {
        if (format >= MP_LIBVIRT_FORMAT__MAX) {
            g_set_error(error, G_IO_ERROR, G_IO_ERROR_NOT_SUPPORTED,
                        "%s: libvirt save image format %u at offset 28 "
                        "(expected 0-%u: raw, gzip, bzip2, xz, lzop, zstd, "
                        "sparse)",
                        path, format, MP_LIBVIRT_FORMAT__MAX - 1);
            return NULL;
        }
        img->format = format;
    }
    if (img->data_len == 0 || img->data_len > MP_LIBVIRT_DATA_MAX) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                    "%s: libvirt save image XML length %u at offset 20 "
                    "(expected 1 to %u)",
                    path, img->data_len, MP_LIBVIRT_DATA_MAX);
        return NULL;
    }
    img->data_offset = MP_LIBVIRT_HEADER_SIZE + (guint64)img->data_len;
    if (img->data_offset > file_size) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_PARTIAL_INPUT,
                    "%s: libvirt save image XML length %u at offset 20 "
                    "reaches offset %" G_GUINT64_FORMAT
                    ", past the file's end (%" G_GUINT64_FORMAT " bytes)",
                    path, img->data_len, img->data_offset, file_size);
        return NULL;
    }
    if (cookie_off >= img->data_len) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                    "%s: libvirt save image cookie offset %u at offset 32 "
                    "(expected below the XML length %u)",
                    path, cookie_off, img->data_len);
        return NULL;
    }
    guint32 xml_len = cookie_off ? cookie_off : img->data_len;
    g_autofree char *data = g_malloc(img->data_len + 1);
    if (!pread_all(fd, data, img->data_len, MP_LIBVIRT_HEADER_SIZE)) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_FAILED,
                    "%s: cannot read the libvirt save image's XML", path);
        return NULL;
    }
    data[img->data_len] = '\0';
    if (strnlen(data, xml_len) == 0 || strnlen(data, xml_len) == xml_len) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                    "%s: libvirt save image XML at offset %u is %s",
                    path, MP_LIBVIRT_HEADER_SIZE,
                    data[0] ? "not NUL-terminated within its length"
                            : "empty");
        return NULL;
    }
    img->xml = g_strndup(data, xml_len);
    if (cookie_off && data[cookie_off])
        img->cookie = g_strdup(data + cookie_off);
    read_domain(img);
    return g_steal_pointer(&img);
}

json_object *
mp_libvirt_image_to_json(const MpLibvirtImage *img)
{
    json_object *o = json_object_new_object(), *d = json_object_new_object();

    json_object_object_add(o, "complete", json_object_new_boolean(img->complete));
    json_object_object_add(o, "version", json_object_new_int(img->version));
    json_object_object_add(
        o, "format",
        json_object_new_string(mp_libvirt_format_name(img->format)));
    json_object_object_add(o, "data_offset",
                           json_object_new_uint64(img->data_offset));
    json_object_object_add(o, "was_running",
                           json_object_new_boolean(img->was_running));
    if (img->swapped)
        json_object_object_add(o, "byte_swapped", json_object_new_boolean(TRUE));
    json_object_object_add(d, "name", img->name
                                          ? json_object_new_string(img->name)
                                          : NULL);
    json_object_object_add(d, "memory",
                           img->memory_bytes
                               ? json_object_new_uint64(img->memory_bytes)
                               : NULL);
    json_object_object_add(d, "machine",
                           img->machine ? json_object_new_string(img->machine)
                                        : NULL);
    json_object_object_add(o, "domain", d);
    json_object_object_add(o, "xml", json_object_new_string(img->xml));
    return o;
}
