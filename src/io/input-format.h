/* input-format.h: what a file given to `analyze` holds, told by its
 * content (magic bytes), never by its name. */
#pragma once

#include <glib.h>

typedef enum {
    MP_FORMAT_STREAM,     /* QEMU's stream: "QEVM", version 3 */
    MP_FORMAT_ZSTD,       /* the same, zstd-compressed */
    MP_FORMAT_CAPTURE,    /* a relay capture directory */
    MP_FORMAT_LIBVIRT,    /* a libvirt save image */
    MP_FORMAT_MAPPED_RAM, /* a stream whose configuration lists mapped-ram */
    MP_FORMAT_QCOW2,      /* a qcow2 image (internal snapshots) */
    MP_FORMAT_PCAP,       /* a packet capture (pcap or pcapng) */
    MP_FORMAT_UNKNOWN,
} MpInputFormat;

/* How many bytes detection reads at most (mapped-ram is told by the
 * stream's configuration section, which comes first). */
#define MP_FORMAT_PROBE (64u << 10)

/* @return FALSE with an error if `path` cannot be opened or read; TRUE
 * with *format set otherwise (MP_FORMAT_UNKNOWN with *why saying what
 * the file starts with). */
gboolean mp_input_format_detect(const char *path, MpInputFormat *format,
                                char **why, GError **error);

/* "stream", "zstd", "capture", "libvirt", "mapped-ram", "qcow2",
 * "pcap", "unknown" */
const char *mp_input_format_name(MpInputFormat f);
