/* test-stream-input.c: finding the vmdesc at the end of a stream file,
 * plain and zstd, near the end and beyond the first tail read. */
#include "config.h"
#include <string.h>
#include <criterion/criterion.h>
#include <glib/gstdio.h>
#include <zstd.h>
#include "stream-input.h"
#include "test-util.h"

static char *dir;

static void
setup(void)
{
    dir = tu_tmpdir_new("mp-stream-input");
}

static void
teardown(void)
{
    g_clear_pointer(&dir, tu_tmpdir_remove);
}

TestSuite(stream_input, .init = setup, .fini = teardown);

/* `filler` bytes of stream, then EOF, VMDESCRIPTION, be32 length and the
 * JSON `json` padded with `pad` spaces inside its braces.  @return the
 * file's path (caller frees). */
static char *
write_stream(const char *name, gsize filler, const char *json, gsize pad,
             gboolean zst)
{
    g_autoptr(GByteArray) b = g_byte_array_new();
    g_autofree guint8 *zeros = g_malloc0(filler);
    g_byte_array_append(b, zeros, filler);
    g_autoptr(GString) j = g_string_new(json);
    if (pad) {
        g_autofree char *spaces = g_strnfill(pad, ' ');
        g_string_insert(j, 1, spaces);
    }
    guint8 hdr[6] = {0x00, 0x06};
    guint32 len = GUINT32_TO_BE((guint32)j->len);
    memcpy(hdr + 2, &len, 4);
    g_byte_array_append(b, hdr, sizeof(hdr));
    g_byte_array_append(b, (const guint8 *)j->str, j->len);

    char *path = g_build_filename(dir, name, NULL);
    if (zst) {
        gsize cap = ZSTD_compressBound(b->len);
        g_autofree guint8 *z = g_malloc(cap);
        gsize n = ZSTD_compress(z, cap, b->data, b->len, 1);
        cr_assert_not(ZSTD_isError(n));
        cr_assert(g_file_set_contents(path, (char *)z, n, NULL));
    } else {
        cr_assert(g_file_set_contents(path, (char *)b->data, b->len, NULL));
    }
    return path;
}

#define VMDESC "{\"page_size\": 4096, \"devices\": []}"

static void
check_found(const char *path, gboolean zst)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(MpVmdesc) vd = mp_input_find_vmdesc(path, zst, &err);
    cr_assert_not_null(vd, "%s: %s", path, err ? err->message : "none");
    cr_assert_eq(mp_vmdesc_page_size(vd), 4096);
}

Test(stream_input, vmdesc_near_the_end)
{
    g_autofree char *plain = write_stream("a.mig", 100000, VMDESC, 0, FALSE);
    g_autofree char *zst = write_stream("a.mig.zst", 100000, VMDESC, 0, TRUE);
    check_found(plain, FALSE);
    check_found(zst, TRUE);
}

/* a vmdesc of 1 MiB: beyond the first 256 KiB looked at */
Test(stream_input, vmdesc_beyond_the_first_tail)
{
    g_autofree char *plain =
        write_stream("b.mig", 3 << 20, VMDESC, 1 << 20, FALSE);
    check_found(plain, FALSE);
}

Test(stream_input, no_vmdesc_is_no_error)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *path = g_build_filename(dir, "c.mig", NULL);
    cr_assert(g_file_set_contents(path, "QEVM\0\0\0\3\0", 9, NULL));
    cr_assert_null(mp_input_find_vmdesc(path, FALSE, &err));
    cr_assert_null(err);
    g_autofree char *missing = g_build_filename(dir, "none.mig", NULL);
    cr_assert_null(mp_input_find_vmdesc(missing, FALSE, &err));
    cr_assert_null(err);
}

Test(stream_input, broken_vmdesc_says_why)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *path =
        write_stream("d.mig", 10, "{\"page_size\": 4096}", 0, FALSE);
    cr_assert_null(mp_input_find_vmdesc(path, FALSE, &err));
    cr_assert_not_null(err);
    cr_assert(strstr(err->message, "devices"), "%s", err->message);
}
