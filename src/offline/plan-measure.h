/* plan-measure.h: the input of `migproxy plan`: a capture analyzed, and
 * the pair's encoders (filters/: zero runs, dedup, delta, zstd) run on
 * its pages in stream order, as the migproxy source would run them.
 */
#pragma once

#include <glib.h>
#include <json-c/json.h>
#include "plan.h"

/* Which encoders run (`plan --encoders`). */
typedef struct {
    gboolean zero, zstd, delta, dedup;
} MpPlanEncoders;

/* Tunnel bytes per PAGES batch besides its payload: the frame header
 * (MP_TUN_HEADER_LEN in src/tunnel/tunnel-frame.h). */
#define MP_PLAN_FRAME_OVERHEAD 20
/* Pages per batch: about what one QEMU PART section of a busy round
 * carries per 1 MiB; the tunnel batches per block and section. */
#define MP_PLAN_BATCH_PAGES 256

/* What the encoders made of the capture's pages. */
typedef struct {
    guint64 bulk_pages, dirty_pages; /* first sends, sends again */
    double bulk_bytes, dirty_bytes;  /* tunnel bytes for them */
    guint64 skipped_pages; /* XBZRLE, compressed: not decoded, not counted */
    double busy_s;         /* the encoders' time on this thread */
} MpPlanCodecs;

/* Parses `encoders` ("zero,zstd,delta,dedup", any subset; "all";
 * "none").  @return FALSE with an error naming the unknown word. */
gboolean mp_plan_encoders_parse(const char *list, MpPlanEncoders *out,
                                GError **error);

/* Analyzes `path` (whatever `migproxy analyze` reads) and runs `enc` on
 * the pages of its first migration.  *ok as mp_analyze_file().
 * @return the analysis document (caller owns). */
json_object *mp_plan_measure(const char *path, const MpPlanEncoders *enc,
                             MpPlanCodecs *out, gboolean *ok);

/* Sets the pair fields of `g` from `c`: bytes per page, first sends and
 * sends again (a capture that sent nothing twice: the bulk ratio for
 * both), and the encoders' rate. */
void mp_plan_guest_set_codecs(MpPlanGuest *g, const MpPlanCodecs *c);
