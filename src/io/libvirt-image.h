/* libvirt-image.h: the header of a libvirt save image (`virsh save`,
 * `virsh managedsave`, /var/lib/libvirt/qemu/save/): a fixed header, the
 * domain XML (and a cookie), padding, then QEMU's migration stream, raw or
 * compressed as libvirt's `save_image_format` says. */
#pragma once

#include <glib.h>
#include <json-c/json.h>

/* The fixed header: 16 bytes of magic, five 32-bit words in the writing
 * host's byte order, 14 unused words (qemu_saveimage.h). */
#define MP_LIBVIRT_HEADER_SIZE 92u
#define MP_LIBVIRT_MAGIC       "LibvirtQemudSave"
/* written first; the magic above replaces it once the image is complete */
#define MP_LIBVIRT_MAGIC_PART  "LibvirtQemudPart"
#define MP_LIBVIRT_VERSION_MAX 2u
/* The XML and cookie are read into memory: libvirt pads them to their
 * length plus 64 KiB; a domain's XML is far below this bound. */
#define MP_LIBVIRT_DATA_MAX (16u << 20)

/* virQEMUSaveFormat: the on-disk numbers of `save_image_format` */
typedef enum {
    MP_LIBVIRT_RAW = 0,
    MP_LIBVIRT_GZIP = 1,
    MP_LIBVIRT_BZIP2 = 2,
    MP_LIBVIRT_XZ = 3,
    MP_LIBVIRT_LZOP = 4,
    MP_LIBVIRT_ZSTD = 5,
    MP_LIBVIRT_SPARSE = 6, /* QEMU writes a mapped-ram stream (libvirt 11+) */
    MP_LIBVIRT_FORMAT__MAX,
} MpLibvirtFormat;

typedef struct {
    gboolean complete; /* "Save" magic; "Part": libvirt did not finish */
    gboolean swapped;  /* written by a host of the other byte order */
    guint32 version;
    guint32 data_len; /* XML, cookie and padding */
    gboolean was_running;
    MpLibvirtFormat format; /* RAW for version 1 (no compression then) */
    guint64 data_offset;    /* where QEMU's stream starts */
    char *xml;              /* NUL-terminated domain XML */
    char *cookie;           /* or NULL */
    /* from the XML (NULL / 0 if it does not say) */
    char *name;
    guint64 memory_bytes;
    char *machine;
} MpLibvirtImage;

/* TRUE if `buf` starts with either magic. */
gboolean mp_libvirt_is_image(const guint8 *buf, gsize len);

/* Reads and checks the header of the image open on `fd` (of `file_size`
 * bytes).  @return the header or NULL with an error naming the file, the
 * field, its offset and what was expected. */
MpLibvirtImage *mp_libvirt_image_read(int fd, const char *path,
                                      guint64 file_size, GError **error);
void mp_libvirt_image_free(MpLibvirtImage *img); /* accepts NULL */
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MpLibvirtImage, mp_libvirt_image_free)

/* "raw", "gzip", ... as in qemu.conf's save_image_format. */
const char *mp_libvirt_format_name(MpLibvirtFormat f);

/* {"complete", "version", "format", "data_offset", "was_running",
 *  "domain": {"name", "memory", "machine"}, "xml"}.  Caller owns it. */
json_object *mp_libvirt_image_to_json(const MpLibvirtImage *img);
