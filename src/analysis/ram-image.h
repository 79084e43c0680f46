/* ram-image.h: the destination's view of guest RAM, built from RAM
 * records and kept in one file per RAMBlock (never in memory), so that
 * `analyze --dump-ram` yields images byte-identical to the guest's memory.
 */
#pragma once

#include <glib.h>
#include "mp-record.h"

typedef struct MpRamImage MpRamImage;

/* Creates `dir` if needed.  @return the image or NULL with an error. */
MpRamImage *mp_ram_image_new(const char *dir, GError **error);
/* Flushes, writes `index.json` and closes the files. */
gboolean mp_ram_image_close(MpRamImage *img, GError **error);
void mp_ram_image_free(MpRamImage *img); /* accepts NULL */
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MpRamImage, mp_ram_image_free)

/* Page payloads inside [buf, buf + len) stay valid until the next
 * mp_ram_image_flush(); others are copied.  Call before each feed. */
void mp_ram_image_set_buffer(MpRamImage *img, const guint8 *buf, gsize len);

/* Handles MP_REC_RAM_BLOCK (creates the block's file) and MP_REC_RAM_PAGE
 * and MP_REC_MFD_PAGE (applies the page); ignores other records.
 * FALSE with an error if the page cannot be applied. */
gboolean mp_ram_image_record(MpRamImage *img, const MpRecord *rec,
                             GError **error);

/* Writes what is queued.  Call before the feed buffer is reused. */
gboolean mp_ram_image_flush(MpRamImage *img, GError **error);

/* File name used for a block: the idstr with '/' turned into '_' and a
 * leading '/' dropped ("pc.ram", "rom@etc_acpi_tables"). */
char *mp_ram_image_file_name(const char *block);
