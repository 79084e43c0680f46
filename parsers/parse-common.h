/* parse-common.h: what every incremental parser shares.
 *
 * Parsers are push state machines: the caller hands them bytes in chunks
 * of any size, split at any byte, and they report records through a
 * callback.  Feeding one byte at a time gives the same records, offsets
 * and errors as feeding everything at once.
 */
#pragma once

#include <glib.h>
#include "mp-record.h"

typedef enum {
    MP_FEED_MORE,   /* all input used; more is needed */
    MP_FEED_PAUSED, /* a callback paused; resume at buf + *consumed */
    MP_FEED_END,    /* the channel's grammar ended; bytes after *consumed
                       are not ours */
    MP_FEED_ERROR,  /* sticky: every later feed returns it again */
} MpFeedStatus;

#define MP_PARSE_ERROR (mp_parse_error_quark())
GQuark mp_parse_error_quark(void);

typedef enum {
    MP_PARSE_ERROR_MAGIC,        /* bad magic */
    MP_PARSE_ERROR_VERSION,      /* unsupported version */
    MP_PARSE_ERROR_SECTION_TYPE, /* unknown top-level byte */
    MP_PARSE_ERROR_SECTION,      /* bad section header, id or footer */
    MP_PARSE_ERROR_COMMAND,      /* bad command or command length */
    MP_PARSE_ERROR_RAM_FLAGS,    /* unknown or invalid RAM flags */
    MP_PARSE_ERROR_NO_BLOCK,     /* CONTINUE with no previous block */
    MP_PARSE_ERROR_LENGTH,       /* a length field out of its bounds */
    MP_PARSE_ERROR_DECODE,       /* XBZRLE/zlib/zstd payload is invalid */
    MP_PARSE_ERROR_TRUNCATED,    /* input ended inside a record */
    MP_PARSE_ERROR_RP_MESSAGE,   /* bad return-path message */
    MP_PARSE_ERROR_MULTIFD,      /* bad multifd init or packet */
    MP_PARSE_ERROR_UNSUPPORTED,  /* valid, but we cannot follow it */
} MpParseErrorCode;

/* Sets *error (if not NULL) to "CHANNEL: message" in MP_PARSE_ERROR: every
 * parser error names its channel first. */
void mp_parse_error_set(GError **error, const char *channel,
                        MpParseErrorCode code, const char *fmt, ...)
    G_GNUC_PRINTF(4, 5);
void mp_parse_error_set_valist(GError **error, const char *channel,
                               MpParseErrorCode code, const char *fmt,
                               va_list ap) G_GNUC_PRINTF(4, 0);

/* The input of one feed call, as a parser's state functions read it. */
typedef struct {
    const guint8 *buf; /* the feed's first byte */
    const guint8 *pos; /* the next byte to read */
    const guint8 *end; /* where reading stops (the input's end, or a
                          nested length's: a PACKAGED blob) */
    guint64 off;       /* stream offset of buf[0] */
} MpCursor;

/* @return the stream offset of c->pos. */
static inline guint64
mp_cursor_offset(const MpCursor *c)
{
    return c->off + (guint64)(c->pos - c->buf);
}

/* @return how many bytes are left to read. */
static inline gsize
mp_cursor_left(const MpCursor *c)
{
    return (gsize)(c->end - c->pos);
}

/* Gathers a field that may arrive split across feeds: the one way every
 * parser does it.
 *
 * mp_accum_take() returns a pointer to `need` contiguous bytes once they
 * are all there: straight into the caller's buffer when the field is whole
 * in it (no copy), otherwise into the accumulator.  It returns NULL when
 * the input ran out first; call again with the next chunk and the same
 * `need`.  The pointer is valid until the next take or the end of the
 * feed call, whichever comes first: copy what must outlive it.
 * `have` counts the bytes of a split field gathered so far (0 between
 * fields). */
typedef struct {
    guint8 *buf;
    gsize cap;
    gsize have;
} MpAccum;

void mp_accum_init(MpAccum *a, gsize cap);
void mp_accum_clear(MpAccum *a);
const guint8 *mp_accum_take(MpAccum *a, gsize need, MpCursor *in);

static inline guint16
mp_be16(const guint8 *p)
{
    return (guint16)((guint16)p[0] << 8 | p[1]);
}

static inline guint32
mp_be32(const guint8 *p)
{
    return (guint32)p[0] << 24 | (guint32)p[1] << 16 | (guint32)p[2] << 8
           | p[3];
}

static inline guint64
mp_be64(const guint8 *p)
{
    return (guint64)mp_be32(p) << 32 | mp_be32(p + 4);
}

static inline void
mp_put_be16(guint8 *p, guint16 v)
{
    p[0] = v >> 8;
    p[1] = v;
}

static inline void
mp_put_be32(guint8 *p, guint32 v)
{
    p[0] = v >> 24;
    p[1] = v >> 16;
    p[2] = v >> 8;
    p[3] = v;
}

static inline void
mp_put_be64(guint8 *p, guint64 v)
{
    mp_put_be32(p, v >> 32);
    mp_put_be32(p + 4, (guint32)v);
}

/* json-c's heap for a document, whatever its shape: 15 MiB of "[],"
 * took it 778 MB.  Callers refuse JSON estimated above this. */
#define MP_JSON_MAX_HEAP (128u << 20)

/* An upper estimate of what json-c needs to parse `len` bytes of `json`,
 * from its objects and other values counted outside strings (a few ms
 * for 16 MiB).  @return bytes. */
guint64 mp_json_heap_estimate(const char *json, gsize len);

/* Text from the stream (RAMBlock, section and device names, a machine
 * type) as it may be printed on a terminal or in a log line: every byte
 * outside printable ASCII (ESC, CR, newline and the other control bytes,
 * DEL, bytes >= 0x80) becomes \xNN (\n, \r and \t as such), so that a name
 * can neither move the cursor, clear the screen nor start a line of its
 * own.  Printable text comes out as it went in: escaping twice is the
 * same as once, and a name with a backslash is ambiguous but harmless.
 * NULL appends "(null)". */
void mp_string_append_printable(GString *out, const char *s);
/* The same as a new string (free with g_free()). */
char *mp_printable(const char *s);
/* Makes `e`'s message printable in place (accepts NULL).  Parsers call it
 * on every error they raise, whose messages quote names from the stream. */
void mp_error_make_printable(GError *e);
