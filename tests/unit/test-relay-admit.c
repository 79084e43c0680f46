/* test-relay-admit.c: the relay's checks on a new connection's first
 * bytes and on whether it may join a session (relay-admit.c), every
 * input whole and cut at every length. */
#include "config.h"
#include <string.h>
#include <criterion/criterion.h>
#include "relay-admit.h"

static const guint8 header_cmd[] = {
    'Q', 'E', 'V', 'M', 0, 0, 0, 3, 0x08, 0, 1, 0, 0}; /* OPEN_RETURN_PATH */

static MpAdmitKind
classify(const void *buf, gsize len, gboolean closed, MpAdmitInfo *info)
{
    MpAdmitInfo tmp;
    return mp_admit_classify(buf, len, closed, info ? info : &tmp);
}

/* Every proper prefix is MORE while open and REFUSE once closed; the
 * whole input is `kind`. */
static void
check_prefixes(const guint8 *buf, gsize len, MpAdmitKind kind)
{
    for (gsize n = 0; n < len; n++) {
        cr_assert_eq(classify(buf, n, FALSE, NULL), MP_ADMIT_MORE,
                     "prefix of %zu bytes", n);
        cr_assert_eq(classify(buf, n, TRUE, NULL), MP_ADMIT_REFUSE,
                     "closed after %zu bytes", n);
    }
    cr_assert_eq(classify(buf, len, FALSE, NULL), kind);
    cr_assert_eq(classify(buf, len, TRUE, NULL), kind);
}

static GInetAddress *
ip(const char *s)
{
    return g_inet_address_new_from_string(s);
}

static void
mfd_packet(guint8 *p, guint8 id, guint8 uuid_byte)
{
    memset(p, 0, 64);
    p[0] = 0x11, p[1] = 0x22, p[2] = 0x33, p[3] = 0x44;
    p[7] = 1;
    memset(p + 8, uuid_byte, 16);
    p[24] = id;
}

Test(admit, main_needs_a_first_record)
{
    check_prefixes(header_cmd, sizeof header_cmd, MP_ADMIT_MAIN);
    /* a bare header, then silence or a close: never a session */
    cr_assert_eq(classify(header_cmd, 8, FALSE, NULL), MP_ADMIT_MORE);
    MpAdmitInfo info;
    cr_assert_eq(classify(header_cmd, 8, TRUE, &info), MP_ADMIT_REFUSE);
    cr_assert(strstr(info.why, "no complete record"), "%s", info.why);
    /* a header, then garbage */
    guint8 bad[] = {'Q', 'E', 'V', 'M', 0, 0, 0, 3, 0xbb, 1, 2};
    cr_assert_eq(classify(bad, sizeof bad, FALSE, &info), MP_ADMIT_REFUSE);
    cr_assert(strstr(info.why, "after its header"), "%s", info.why);
    guint8 v2[] = {'Q', 'E', 'V', 'M', 0, 0, 0, 2, 8};
    cr_assert_eq(classify(v2, sizeof v2, FALSE, &info), MP_ADMIT_REFUSE);
    cr_assert(strstr(info.why, "version 2"), "%s", info.why);
}

Test(admit, garbage_is_refused)
{
    const char *http = "GET / HTTP/1.0\r\n\r\n";
    MpAdmitInfo info;
    cr_assert_eq(classify(http, strlen(http), FALSE, &info), MP_ADMIT_REFUSE);
    cr_assert_eq(classify("", 0, TRUE, &info), MP_ADMIT_REFUSE);
    cr_assert(strstr(info.why, "without sending anything"));
    GRand *rnd = g_rand_new_with_seed(9);
    guint refused = 0;
    for (int i = 0; i < 10000; i++) {
        guint8 b[64];
        for (gsize k = 0; k < sizeof b; k++)
            b[k] = g_rand_int(rnd);
        refused += classify(b, sizeof b, TRUE, NULL) == MP_ADMIT_REFUSE;
    }
    g_rand_free(rnd);
    /* 0x08 at the start with command 9/10 and the right length, a RAM
     * record with a printable name: none in 10000 random inputs */
    cr_assert_eq(refused, 10000);
}

Test(admit, tls_only_a_client_hello)
{
    guint8 hello[9 + 41] = {0x16, 0x03, 0x01, 0x00, 45, 0x01, 0, 0, 41};
    check_prefixes(hello, 9, MP_ADMIT_TLS);
    guint8 junk[] = {0x16, 0x03, 0xee, 0x12, 0x34, 0x56, 0, 0, 0};
    cr_assert_eq(classify(junk, sizeof junk, TRUE, NULL), MP_ADMIT_REFUSE);
    guint8 not_hello[] = {0x16, 0x03, 0x03, 0x00, 45, 0x02, 0, 0, 41};
    cr_assert_eq(classify(not_hello, sizeof not_hello, TRUE, NULL),
                 MP_ADMIT_REFUSE);
}

Test(admit, multifd_initial_packet)
{
    guint8 p[64];
    MpAdmitInfo info;
    mfd_packet(p, 3, 0x5a);
    check_prefixes(p, sizeof p, MP_ADMIT_MULTIFD);
    classify(p, sizeof p, FALSE, &info);
    cr_assert_eq(info.mfd_id, 3);
    cr_assert_eq(info.mfd_uuid[15], 0x5a);
    p[7] = 9; /* version */
    cr_assert_eq(classify(p, sizeof p, FALSE, NULL), MP_ADMIT_REFUSE);
}

Test(admit, multifd_channels_agree)
{
    g_autoptr(GInetAddress) a = ip("10.0.0.1");
    g_autoptr(GInetAddress) a6 = ip("::ffff:10.0.0.1");
    g_autoptr(GInetAddress) b = ip("10.0.0.9");
    g_autoptr(MpAdmitSession) s = mp_admit_session_new(a, FALSE, FALSE);
    guint8 p[64];
    MpAdmitInfo info;
    char why[256];

    mfd_packet(p, 0, 0x5a);
    classify(p, sizeof p, FALSE, &info);
    cr_assert(!mp_admit_session_join(s, b, &info, why, sizeof why));
    cr_assert(strstr(why, "another address"), "%s", why);
    cr_assert(mp_admit_session_join(s, a6, &info, why, sizeof why), "%s", why);
    /* the same id again */
    cr_assert(!mp_admit_session_join(s, a, &info, why, sizeof why));
    cr_assert(strstr(why, "id 0 is taken"), "%s", why);
    /* another VM */
    mfd_packet(p, 1, 0x77);
    classify(p, sizeof p, FALSE, &info);
    cr_assert(!mp_admit_session_join(s, a, &info, why, sizeof why));
    cr_assert(strstr(why, "UUID"), "%s", why);
    mfd_packet(p, 1, 0x5a);
    classify(p, sizeof p, FALSE, &info);
    cr_assert(mp_admit_session_join(s, a, &info, why, sizeof why), "%s", why);
    cr_assert_eq(mp_admit_session_conns(s), 3);
    /* a multifd session never takes a silent connection as preempt */
    cr_assert(!mp_admit_session_join_silent(s, a, TRUE));
}

Test(admit, multifd_channel_count_is_bounded)
{
    g_autoptr(GInetAddress) a = ip("10.0.0.1");
    g_autoptr(MpAdmitSession) s = mp_admit_session_new(a, FALSE, FALSE);
    guint8 p[64];
    MpAdmitInfo info;
    char why[256];

    for (guint id = 0; id < 256; id++) {
        mfd_packet(p, id, 1);
        classify(p, sizeof p, FALSE, &info);
        gboolean ok = mp_admit_session_join(s, a, &info, why, sizeof why);
        cr_assert_eq(ok, id < MP_ADMIT_MAX_MULTIFD, "id %u: %s", id, why);
    }
}

static const MpRecord advise = {.kind = MP_REC_COMMAND,
                                .u.cmd = {.cmd = MP_QMIG_CMD_POSTCOPY_ADVISE}};
static const MpRecord packaged = {.kind = MP_REC_COMMAND,
                                  .u.cmd = {.cmd = MP_QMIG_CMD_PACKAGED}};

static void
add_block(MpAdmitSession *s, const char *name)
{
    MpRecord r = {.kind = MP_REC_RAM_BLOCK, .u.block = {.name = name}};
    mp_admit_session_record(s, &r);
}

Test(admit, silent_preempt_72)
{
    g_autoptr(GInetAddress) a = ip("10.0.0.1");
    g_autoptr(GInetAddress) b = ip("10.0.0.2");
    g_autoptr(MpAdmitSession) s = mp_admit_session_new(a, FALSE, FALSE);

    /* no post-copy announced: a silent connection is nobody */
    cr_assert(!mp_admit_session_join_silent(s, a, TRUE));
    cr_assert(mp_admit_session_record(s, &advise));
    cr_assert(!mp_admit_session_join_silent(s, b, TRUE));
    /* not where 7.2 opens it, and no switchover yet */
    cr_assert(!mp_admit_session_join_silent(s, a, FALSE));
    cr_assert(mp_admit_session_join_silent(s, a, TRUE));
    /* only one */
    cr_assert(!mp_admit_session_join_silent(s, a, TRUE));
}

Test(admit, silent_preempt_at_switchover)
{
    g_autoptr(GInetAddress) a = ip("10.0.0.1");
    g_autoptr(MpAdmitSession) s = mp_admit_session_new(a, FALSE, FALSE);

    mp_admit_session_record(s, &advise);
    cr_assert(!mp_admit_session_join_silent(s, a, FALSE));
    cr_assert(mp_admit_session_record(s, &packaged));
    cr_assert(mp_admit_session_join_silent(s, a, FALSE));
}

Test(admit, preempt_records_name_a_block)
{
    g_autoptr(GInetAddress) a = ip("10.0.0.1");
    g_autoptr(MpAdmitSession) s = mp_admit_session_new(a, FALSE, FALSE);
    guint8 rec[9 + 6] = {0, 0, 0, 0, 0, 0x01, 0x20, 0x08, 6};
    MpAdmitInfo info;
    char why[256];

    memcpy(rec + 9, "pc.ram", 6);
    check_prefixes(rec, sizeof rec, MP_ADMIT_PREEMPT);
    classify(rec, sizeof rec, FALSE, &info);
    cr_assert_str_eq(info.block, "pc.ram");
    add_block(s, "pc.ram");
    cr_assert(!mp_admit_session_join(s, a, &info, why, sizeof why));
    cr_assert(strstr(why, "without post-copy"), "%s", why);
    mp_admit_session_record(s, &advise);
    memcpy(rec + 9, "xx.ram", 6);
    classify(rec, sizeof rec, FALSE, &info);
    cr_assert(!mp_admit_session_join(s, a, &info, why, sizeof why));
    cr_assert(strstr(why, "not the migration's"), "%s", why);
    memcpy(rec + 9, "pc.ram", 6);
    classify(rec, sizeof rec, FALSE, &info);
    cr_assert(mp_admit_session_join(s, a, &info, why, sizeof why), "%s", why);
    cr_assert(!mp_admit_session_join(s, a, &info, why, sizeof why));
    cr_assert(strstr(why, "second"), "%s", why);
    /* CONTINUE, or a flag QEMU never puts first */
    rec[7] = 0x28;
    cr_assert_eq(classify(rec, sizeof rec, TRUE, NULL), MP_ADMIT_REFUSE);
}

Test(admit, recovery_matches_the_paused_session)
{
    g_autoptr(GInetAddress) a = ip("10.0.0.1");
    g_autoptr(GInetAddress) b = ip("10.0.0.2");
    g_autoptr(MpAdmitSession) s = mp_admit_session_new(a, FALSE, FALSE);
    guint8 bm[] = {0x08, 0, 10, 0, 7, 6, 'p', 'c', '.', 'r', 'a', 'm'};
    guint8 resume[] = {0x08, 0, 9, 0, 0};
    MpAdmitInfo info;
    char why[256];

    check_prefixes(bm, sizeof bm, MP_ADMIT_RECOVERY);
    check_prefixes(resume, sizeof resume, MP_ADMIT_RECOVERY);
    guint8 ping[] = {0x08, 0, 2, 0, 4, 0, 0, 0, 1};
    cr_assert_eq(classify(ping, sizeof ping, FALSE, NULL), MP_ADMIT_REFUSE);
    guint8 badlen[] = {0x08, 0, 10, 0, 9, 6, 'p', 'c', '.', 'r', 'a', 'm'};
    cr_assert_eq(classify(badlen, sizeof badlen, FALSE, NULL), MP_ADMIT_REFUSE);

    add_block(s, "pc.ram");
    add_block(s, "vga.vram");
    classify(bm, sizeof bm, FALSE, &info);
    cr_assert(!mp_admit_session_join(s, b, &info, why, sizeof why));
    cr_assert(mp_admit_session_join(s, a, &info, why, sizeof why), "%s", why);
    memcpy(bm + 6, "xx.ram", 6);
    classify(bm, sizeof bm, FALSE, &info);
    cr_assert(!mp_admit_session_join(s, a, &info, why, sizeof why));
    cr_assert(strstr(why, "not the paused migration's"), "%s", why);
}

Test(admit, tls_sessions_take_tls_channels_only)
{
    g_autoptr(GInetAddress) a = ip("10.0.0.1");
    g_autoptr(MpAdmitSession) tls = mp_admit_session_new(a, TRUE, FALSE);
    g_autoptr(MpAdmitSession) plain = mp_admit_session_new(a, FALSE, FALSE);
    guint8 hello[9] = {0x16, 0x03, 0x01, 0x00, 45, 0x01, 0, 0, 41};
    guint8 p[64];
    MpAdmitInfo h, m;
    char why[256];

    classify(hello, sizeof hello, FALSE, &h);
    mfd_packet(p, 0, 1);
    classify(p, sizeof p, FALSE, &m);
    cr_assert(mp_admit_session_join(tls, a, &h, why, sizeof why), "%s", why);
    cr_assert(!mp_admit_session_join(tls, a, &m, why, sizeof why));
    cr_assert(!mp_admit_session_join(plain, a, &h, why, sizeof why));
    cr_assert(mp_admit_session_join(plain, a, &m, why, sizeof why), "%s", why);
}
