/* test-ram-image.c: the RAM image writer against an in-memory model, with
 * random page records of every kind, payloads inside and outside the
 * "feed buffer", and runs that break anywhere. */
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <glib/gstdio.h>
#include <criterion/criterion.h>
#include "ram-image.h"
#include "test-util.h"
#include "xbzrle.h"

#define PS     4096u
#define PAGES  300u
#define BLOCK  "pc.ram"

static char *dir;

static void
setup(void)
{
    dir = tu_tmpdir_new("mp-ramimg");
}

static void
teardown(void)
{
    g_clear_pointer(&dir, tu_tmpdir_remove);
}

TestSuite(ram_image, .init = setup, .fini = teardown);

static void
add_block(MpRamImage *img, const char *name, guint64 size)
{
    MpRecord r = {.kind = MP_REC_RAM_BLOCK};
    r.u.block.name = name;
    r.u.block.used_length = size;
    cr_assert(mp_ram_image_record(img, &r, NULL));
}

static void
page(MpRamImage *img, guint64 addr, MpPageKind kind, const guint8 *payload,
     guint32 len)
{
    MpRecord r = {.kind = MP_REC_RAM_PAGE};
    GError *err = NULL;
    r.u.page.block = BLOCK;
    r.u.page.addr = addr;
    r.u.page.kind = kind;
    r.u.page.size = PS;
    r.u.page.payload = payload;
    r.u.page.payload_len = len;
    cr_assert(mp_ram_image_record(img, &r, &err), "%s",
              err ? err->message : "");
}

Test(ram_image, random_records_match_model)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(MpRamImage) img = mp_ram_image_new(dir, &err);
    g_autofree guint8 *model = g_malloc0(PAGES * PS);
    /* a fake feed buffer: pages inside it are queued without a copy */
    g_autofree guint8 *feed = g_malloc(64 * PS);
    g_autofree guint8 *scratch = g_malloc(PS);
    guint8 enc[PS + 64];
    GRand *rng = g_rand_new_with_seed(42);

    cr_assert_not_null(img);
    add_block(img, BLOCK, PAGES * PS);
    for (guint round = 0; round < 40; round++) {
        mp_ram_image_set_buffer(img, feed, 64 * PS);
        guint used = 0;
        for (guint k = 0; k < 64; k++) {
            /* mostly sequential runs, sometimes a jump */
            static guint64 next;
            guint64 idx = g_rand_int_range(rng, 0, 4) ? next
                                                      : (guint64)g_rand_int_range(rng, 0, PAGES);
            next = (idx + 1) % PAGES;
            guint8 *m = model + idx * PS;
            switch (g_rand_int_range(rng, 0, 5)) {
            case 0: { /* normal page, payload in the feed buffer */
                guint8 *p = feed + (used++ % 64) * PS;
                for (guint i = 0; i < PS; i++)
                    p[i] = g_rand_int(rng);
                memcpy(m, p, PS);
                page(img, idx * PS, MP_PAGE_NORMAL, p, PS);
                break;
            }
            case 1: { /* normal page from elsewhere (reused scratch) */
                for (guint i = 0; i < PS; i++)
                    scratch[i] = g_rand_int(rng);
                memcpy(m, scratch, PS);
                page(img, idx * PS, MP_PAGE_NORMAL, scratch, PS);
                memset(scratch, 0xee, PS); /* must not matter */
                break;
            }
            case 2: { /* zero page */
                guint8 fill = 0;
                memset(m, 0, PS);
                page(img, idx * PS, MP_PAGE_ZERO, &fill, 1);
                break;
            }
            case 3: { /* XBZRLE delta against the current content */
                memcpy(scratch, m, PS);
                for (guint i = 0; i < 20; i++)
                    scratch[g_rand_int_range(rng, 0, PS)] ^= 0x5a;
                gssize n = mp_xbzrle_encode(m, scratch, PS, enc, sizeof(enc));
                cr_assert_geq(n, 0);
                memcpy(m, scratch, PS);
                page(img, idx * PS, MP_PAGE_XBZRLE, n ? enc : NULL, n);
                break;
            }
            default: /* nothing this time */
                break;
            }
        }
        cr_assert(mp_ram_image_flush(img, &err), "%s",
                  err ? err->message : "");
        memset(feed, 0xdd, 64 * PS); /* the buffer is reused */
    }
    cr_assert(mp_ram_image_close(img, &err), "%s", err ? err->message : "");
    g_rand_free(rng);

    g_autofree char *path = g_build_filename(dir, "pc.ram", NULL);
    g_autofree char *data = NULL;
    gsize len;
    cr_assert(g_file_get_contents(path, &data, &len, NULL));
    cr_assert_eq(len, PAGES * PS);
    for (guint i = 0; i < PAGES; i++)
        cr_assert(memcmp(data + i * PS, model + i * PS, PS) == 0,
                  "page %u differs", i);
}

Test(ram_image, file_names)
{
    g_autofree char *a = mp_ram_image_file_name("/rom@etc/acpi/tables");
    g_autofree char *b = mp_ram_image_file_name("pc.ram");
    cr_assert_str_eq(a, "rom@etc_acpi_tables");
    cr_assert_str_eq(b, "pc.ram");
}

Test(ram_image, page_of_unknown_block_fails)
{
    g_autoptr(MpRamImage) img = mp_ram_image_new(dir, NULL);
    guint8 p[PS] = {1};
    MpRecord r = {.kind = MP_REC_RAM_PAGE};
    g_autoptr(GError) err = NULL;
    r.u.page.block = "nope";
    r.u.page.kind = MP_PAGE_NORMAL;
    r.u.page.payload = p;
    r.u.page.payload_len = PS;
    cr_assert_not(mp_ram_image_record(img, &r, &err));
    cr_assert_not_null(strstr(err->message, "nope"));
}

static mode_t
mode_of(const char *path)
{
    struct stat st;
    cr_assert_eq(lstat(path, &st), 0, "%s", path);
    return st.st_mode & 07777;
}

/* RAM images are guest memory: directory 0700 and files 0600 whatever
 * the umask (0755/0644 before), and a link planted under a block's file
 * name is replaced, its target untouched. */
Test(ram_image, private_and_no_link_followed)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *sub = g_build_filename(dir, "ram", NULL);
    g_autofree char *victim = g_build_filename(dir, "victim", NULL);
    cr_assert(g_file_set_contents(victim, "precious", -1, NULL));
    mode_t old = umask(0);
    g_autoptr(MpRamImage) img = mp_ram_image_new(sub, &err);
    umask(old);
    cr_assert_not_null(img, "%s", err ? err->message : "?");
    g_autofree char *file = g_build_filename(sub, BLOCK, NULL);
    cr_assert_eq(symlink(victim, file), 0);
    add_block(img, BLOCK, 16 * PS);
    guint8 p[PS];
    memset(p, 0x5a, sizeof(p));
    page(img, 0, MP_PAGE_NORMAL, p, PS);
    cr_assert(mp_ram_image_close(img, &err), "%s", err ? err->message : "?");
    cr_assert_eq(mode_of(sub), 0700, "dir %o", mode_of(sub));
    cr_assert_eq(mode_of(file), 0600, "file %o", mode_of(file));
    g_autofree char *index = g_build_filename(sub, "index.json", NULL);
    cr_assert_eq(mode_of(index), 0600, "index %o", mode_of(index));
    g_autofree char *text = NULL;
    cr_assert(g_file_get_contents(victim, &text, NULL, NULL));
    cr_assert_str_eq(text, "precious");
    g_unlink(file);
    g_unlink(index);
    g_rmdir(sub);
    g_unlink(victim);
}
