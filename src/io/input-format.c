/* input-format.c: detection of a file's format by its first bytes. */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <gio/gio.h>
#include "capture-read.h"
#include "input-format.h"
#include "libvirt-image.h"
#include "qmig-parser.h"

static const char *const names[] = {
    "stream", "zstd", "capture", "libvirt", "mapped-ram", "qcow2", "pcap",
    "unknown",
};

const char *
mp_input_format_name(MpInputFormat f)
{
    return names[f];
}

static MpRecordAction
on_config(const MpRecord *rec, gpointer user_data)
{
    int *mapped = user_data;
    if (rec->kind == MP_REC_CONFIGURATION) {
        *mapped = rec->u.config.mapped_ram;
        return MP_REC_PAUSE;
    }
    /* the configuration comes right after the header, or not at all */
    if (rec->kind != MP_REC_STREAM_HEADER) {
        *mapped = 0;
        return MP_REC_PAUSE;
    }
    return MP_REC_CONTINUE;
}

/* A stream whose configuration lists the mapped-ram capability. */
static gboolean
lists_mapped_ram(const guint8 *buf, gsize len)
{
    int mapped = -1;
    gsize used;
    g_autoptr(MpQmigParser) p = mp_qmig_parser_new("probe", on_config, &mapped);
    mp_qmig_parser_feed(p, buf, len, &used, NULL);
    return mapped == 1;
}

static guint32
be32(const guint8 *p)
{
    return (guint32)p[0] << 24 | p[1] << 16 | p[2] << 8 | p[3];
}

gboolean
mp_input_format_detect(const char *path, MpInputFormat *format, char **why,
                       GError **error)
{
    struct stat st;

    *why = NULL;
    if (stat(path, &st) != 0) {
        int e = errno;
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(e),
                    "%s: cannot open: %s", path, g_strerror(e));
        return FALSE;
    }
    if (S_ISDIR(st.st_mode)) {
        if (mp_capture_is_dir(path)) {
            *format = MP_FORMAT_CAPTURE;
            return TRUE;
        }
        *format = MP_FORMAT_UNKNOWN;
        *why = g_strdup("a directory that is not a relay capture (no "
                        "index.json)");
        return TRUE;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(e),
                    "%s: cannot open: %s", path, g_strerror(e));
        return FALSE;
    }
    g_autofree guint8 *buf = g_malloc(MP_FORMAT_PROBE);
    gssize n;
    gsize len = 0;
    while (len < MP_FORMAT_PROBE
           && ((n = pread(fd, buf + len, MP_FORMAT_PROBE - len, len)) > 0
               || (n < 0 && errno == EINTR)))
        if (n > 0)
            len += n;
    int e = errno;
    close(fd);
    if (n < 0 && e == ESPIPE) {
        /* a pipe cannot be probed without taking its bytes: a stream */
        *format = MP_FORMAT_STREAM;
        return TRUE;
    }
    if (n < 0) {
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(e),
                    "%s: read failed: %s", path, g_strerror(e));
        return FALSE;
    }

    guint32 m = len >= 4 ? be32(buf) : 0;
    *format = MP_FORMAT_UNKNOWN;
    if (len >= 4 && m == 0x5145564du) /* "QEVM" */
        *format = lists_mapped_ram(buf, len) ? MP_FORMAT_MAPPED_RAM
                                             : MP_FORMAT_STREAM;
    else if (len >= 4 && m == 0x28b52ffdu) /* zstd frame */
        *format = MP_FORMAT_ZSTD;
    else if (mp_libvirt_is_image(buf, len))
        *format = MP_FORMAT_LIBVIRT;
    else if (len >= 4 && m == 0x514649fbu) /* "QFI\xfb" */
        *format = MP_FORMAT_QCOW2;
    else if (len >= 4
             && (m == 0xa1b2c3d4u || m == 0xd4c3b2a1u || m == 0xa1b23c4du
                 || m == 0x4d3cb2a1u || m == 0x0a0d0d0au))
        *format = MP_FORMAT_PCAP;
    if (*format != MP_FORMAT_UNKNOWN)
        return TRUE;
    if (len == 0) {
        *why = g_strdup("the file is empty");
        return TRUE;
    }
    GString *hex = g_string_new("it starts with");
    for (gsize i = 0; i < MIN(len, 8); i++)
        g_string_append_printf(hex, " %02x", buf[i]);
    *why = g_string_free(hex, FALSE);
    return TRUE;
}
