/* test-relay-strangers.c: clients that are not the migrating QEMU, while a
 * real migration goes through the relay (issue 9: strangers and bounds).
 *
 *   - during a 7.2 multifd migration, strangers on the same host (HTTP,
 *     random bytes, a bare header, a second migration, multifd packets of
 *     another VM or a taken id, RAM records, a recovery command, one from
 *     another address, a silent one) are each refused with a log line and
 *     never join: the migration completes, the report counts its own five
 *     channels only, memory is identical;
 *   - --allow: a client outside it is closed at accept, a migration from
 *     inside completes;
 *   - --once is not ended by a header and a close, `16 03` and garbage, or
 *     a header and silence: none reaches the destination, and the real
 *     migration that follows ends it with status 0;
 *   - at RLIMIT_NOFILE 32, a flood of connections: the relay backs off
 *     accept() with a warning a second (not thousands) and a migration
 *     afterwards completes;
 *   - post-copy paused (migrate-pause) in a relay that saw the migration:
 *     recovery commands from another address, or naming a block that is
 *     not the migration's, are refused; QEMU's own recovery resumes it;
 *   - soak: a multifd migration while hostile clients connect, send and
 *     hold connections all along: memory identical, report completed, the
 *     relay's fds and RSS back where they were.
 */
#include "config.h"
#include <signal.h>
#include <string.h>
#include <errno.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <glib/gstdio.h>
#include <gio/gio.h>
#include <criterion/criterion.h>
#include "itest-util.h"
#include "relay-itest.h"

#define MIGRATE_TIMEOUT_MS (120 * 1000)
#define RAM_BYTES          (128ull << 20)
#define LOG_WAIT_MS        10000 /* for a line in the relay's log */

static ItRelayFixture fx;

static void
fx_init(void)
{
    it_relay_fixture_init(&fx);
}

static void
fx_fini(void)
{
    it_relay_fixture_fini(&fx);
}

TestSuite(relay_strangers, .init = fx_init, .fini = fx_fini, .timeout = 300);

/* What QEMU sends first on each kind of channel, and what strangers send. */
static const guint8 header_cmd[] = {
    'Q', 'E', 'V', 'M', 0, 0, 0, 3, 0x08, 0, 1, 0, 0}; /* OPEN_RETURN_PATH */

static void
mfd_init(guint8 *p, guint8 id, guint8 uuid_byte)
{
    memset(p, 0, 64);
    p[0] = 0x11, p[1] = 0x22, p[2] = 0x33, p[3] = 0x44;
    p[7] = 1;
    memset(p + 8, uuid_byte, 16);
    p[24] = id;
}

/* A 7.2 source with multifd (4 channels) to a paused destination through
 * the relay; the migration is throttled so that it runs for seconds. */
static void
start_multifd_migration(const char *const *relay_args, gboolean once,
                        guint64 bandwidth)
{
    g_autoptr(GError) err = NULL;

    fx.src = it_start_workload("7.2", NULL, 128, "mem=64M", NULL);
    fx.dst = it_start_destination("7.2", NULL, FALSE, NULL);
    guint16 dport = mp_qemu_pick_free_port(&err);
    cr_assert(dport, "%s", err ? err->message : "?");
    fx.relay = it_relay_start_full(fx.dir, dport, once, relay_args);
    it_cap(fx.src, "multifd");
    it_cap(fx.dst, "multifd");
    it_set_int(fx.src, "multifd-channels", 4);
    it_set_int(fx.dst, "multifd-channels", 4);
    it_incoming(fx.dst, dport);
    it_set_int(fx.src, "max-bandwidth", bandwidth);
    it_migrate(fx.src, fx.relay->port, FALSE);
}

/* Completed on both sides; memory identical. */
static void
assert_migration_completed(void)
{
    json_object *info = it_wait_final(fx.src, MIGRATE_TIMEOUT_MS);
    g_autofree char *log = it_relay_log_text(fx.relay);
    cr_assert_str_eq(json_object_get_string(it_jget(info, "status")),
                     "completed", "%s\nrelay log:\n%s",
                     json_object_to_json_string(info), log);
    json_object_put(info);
    json_object *dinfo = it_wait_final(fx.dst, MIGRATE_TIMEOUT_MS);
    cr_assert_str_eq(json_object_get_string(it_jget(dinfo, "status")),
                     "completed");
    json_object_put(dinfo);
    it_assert_same_ram(fx.src, fx.dst, RAM_BYTES, fx.dir);
}

/* The report: completed, with exactly main + 4 multifd channels. */
static void
assert_report_is_the_migrations(json_object *rep)
{
    g_autofree char *log = it_relay_log_text(fx.relay);
    cr_assert_str_eq(json_object_get_string(it_jget(rep, "outcome")),
                     "completed", "relay log:\n%s", log);
    json_object *chans = it_jget(rep, "channels");
    cr_assert_eq(json_object_array_length(chans), 5, "channels: %s",
                 json_object_to_json_string(chans));
    for (guint i = 0; i < 5; i++) {
        const char *kind = json_object_get_string(
            it_jget(json_object_array_get_idx(chans, i), "kind"));
        cr_assert_str_eq(kind, i ? "multifd" : "main", "channel %u", i);
    }
    cr_assert(!json_object_get_boolean(it_jget(rep, "partial")), "partial: %s",
              json_object_to_json_string(rep));
}

Test(relay_strangers, refused_during_multifd_72)
{
    g_autoptr(GError) err = NULL;
    const char *args[] = {"--handshake-timeout=1000", NULL};

    start_multifd_migration(args, TRUE, 16 << 20);
    /* QEMU's own channels are in before the strangers come */
    it_relay_assert_log_has(fx.relay, "channel 4 is multifd", LOG_WAIT_MS);

    struct {
        const char *what, *from;
        guint8 bytes[80];
        gsize len;
        const char *log;
    } s[] = {
        {"http", NULL, "GET / HTTP/1.0\r\n\r\n", 18,
         "not a QEMU migration stream"},
        {"random",
         NULL,
         {0x9c, 0x31, 0xe7, 0x05, 0x44, 0xfe, 0x10, 0x6b, 0x2a},
         9,
         "not a QEMU migration stream"},
        {"bare header",
         NULL,
         {'Q', 'E', 'V', 'M', 0, 0, 0, 3},
         8,
         "sent only 8 bytes"},
        {"second migration", NULL, {0}, 0, "a second migration stream"},
        {"multifd garbage",
         NULL,
         {0x11, 0x22, 0x33, 0x44, 0xde, 0xad},
         64,
         "multifd initial packet of version"},
        {"another VM", NULL, {0}, 64, "names another VM"},
        {"taken id", NULL, {0}, 64, "id 0 is taken"},
        {"another host", "127.0.0.2", {0}, 64, "another address"},
        {"RAM records",
         NULL,
         {0, 0, 0, 0, 0, 0x01, 0x20, 0x08, 6, 'p', 'c', '.', 'r', 'a', 'm'},
         15,
         "without post-copy"},
        {"recovery", NULL, {0x08, 0, 9, 0, 0}, 5, "is not paused"},
        {"silent", NULL, {0}, 0, "sent nothing in 1000 ms"},
    };
    memcpy(s[3].bytes, header_cmd, sizeof header_cmd);
    s[3].len = sizeof header_cmd;
    mfd_init(s[5].bytes, 1, 0x5a);
    mfd_init(s[6].bytes, 0, 0); /* QEMU's UUID is zeros without -uuid */
    mfd_init(s[7].bytes, 7, 0);

    GSocket *socks[G_N_ELEMENTS(s)];
    for (guint i = 0; i < G_N_ELEMENTS(s); i++) {
        socks[i] = it_connect_from(s[i].from, fx.relay->port);
        if (s[i].len)
            it_send_all(socks[i], s[i].bytes, s[i].len);
    }
    /* each is closed and says why; the migration goes on */
    for (guint i = 0; i < G_N_ELEMENTS(s); i++) {
        it_assert_closed_by_relay(socks[i], s[i].what);
        it_relay_assert_log_has(fx.relay, s[i].log, LOG_WAIT_MS);
        g_object_unref(socks[i]);
    }
    g_autofree char *st = it_migration_status(fx.src);
    cr_assert_str_eq(st, "active", "the strangers outlived the migration");

    assert_migration_completed();
    cr_assert_eq(it_relay_wait(fx.relay, 30000), 0);
    json_object *rep = it_relay_report(fx.relay);
    assert_report_is_the_migrations(rep);
    json_object_put(rep);
    g_autofree char *log = it_relay_log_text(fx.relay);
    cr_assert_null(strstr(log, "session 2"), "a stranger got a session:\n%s",
                   log);
}

Test(relay_strangers, allow_limits_who_migrates)
{
    g_autoptr(GError) err = NULL;
    guint16 dport;
    fx.fake_dst = it_fake_destination(&dport);
    const char *args[] = {"--allow", "192.0.2.0/24", "--allow", "127.0.0.1",
                          NULL};

    fx.relay = it_relay_start(fx.dir, dport, args);
    /* a whole stream header and record, from outside --allow */
    g_autoptr(GSocket) out = it_connect_from("127.0.0.2", fx.relay->port);
    it_send_all(out, header_cmd, sizeof header_cmd);
    it_assert_closed_by_relay(out, "outside --allow");
    it_relay_assert_log_has(
        fx.relay, "connection from 127.0.0.2: not in --allow; closed",
        LOG_WAIT_MS);
    it_assert_no_connection(fx.fake_dst);
    cr_assert(!it_relay_exited(fx.relay), "the relay exited");

    /* from inside: a real migration */
    it_fake_destination_close(&fx.fake_dst);
    it_relay_migrate_72(fx.relay, dport, &fx.src, &fx.dst, fx.dir);
}

Test(relay_strangers, allow_rejects_bad_masks)
{
    const char *argv[] = {it_migproxy(),
                          "relay",
                          "--listen=127.0.0.1:0",
                          "--to=127.0.0.1:1",
                          "--allow",
                          "10.0.0.0/99",
                          NULL};
    g_autofree char *out = NULL, *errs = NULL;
    int status = 0;
    cr_assert(g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_DEFAULT, NULL,
                           NULL, &out, &errs, &status, NULL));
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 1, "%d: %s", status,
              errs);
    cr_assert(strstr(errs, "--allow 10.0.0.0/99"), "%s", errs);
}

Test(relay_strangers, once_is_not_ended_by_strangers)
{
    guint16 dport;
    fx.fake_dst = it_fake_destination(&dport);
    const char *args[] = {"--handshake-timeout=500", NULL};

    fx.relay = it_relay_start(fx.dir, dport, args);
    /* a header, and a close */
    g_autoptr(GSocket) a = it_connect_port(fx.relay->port);
    it_send_all(a, header_cmd, 8);
    g_socket_close(a, NULL);
    it_relay_assert_log_has(fx.relay, "a stream header and no complete record",
                            LOG_WAIT_MS);
    /* a TLS record type and version, then garbage, and a close */
    g_autoptr(GSocket) b = it_connect_port(fx.relay->port);
    it_send_all(b, "\x16\x03\xee\x12\x34\x56garbage", 13);
    g_socket_close(b, NULL);
    it_relay_assert_log_has(fx.relay, "not a TLS ClientHello", LOG_WAIT_MS);
    /* a header, and silence */
    g_autoptr(GSocket) c = it_connect_port(fx.relay->port);
    it_send_all(c, header_cmd, 8);
    it_assert_closed_by_relay(c, "a header and silence");
    it_relay_assert_log_has(fx.relay, "sent only 8 bytes", LOG_WAIT_MS);

    g_usleep(300 * 1000);
    it_assert_no_connection(fx.fake_dst);
    cr_assert(!it_relay_exited(fx.relay), "a stranger ended --once");

    /* A plausible ClientHello and a close: it may be a TLS migration, so
     * it reaches the destination; it went no further, so --once waits */
    guint8 hello[9 + 41] = {0x16, 0x03, 0x01, 0x00, 45, 0x01, 0, 0, 41};
    g_autoptr(GSocket) d = it_connect_port(fx.relay->port);
    it_send_all(d, hello, sizeof hello);
    g_socket_close(d, NULL);
    g_autoptr(GSocket) at_dst = NULL;
    for (int i = 0; i < 100 && !at_dst; i++, g_usleep(20000))
        at_dst = g_socket_accept(fx.fake_dst, NULL, NULL);
    cr_assert_not_null(at_dst, "the ClientHello did not reach the "
                               "destination");
    g_socket_close(at_dst, NULL);
    it_relay_assert_log_has(fx.relay, "went no further than its ClientHello",
                            LOG_WAIT_MS);
    g_usleep(300 * 1000);
    cr_assert(!it_relay_exited(fx.relay), "a ClientHello ended --once");

    it_fake_destination_close(&fx.fake_dst);
    it_relay_migrate_72(fx.relay, dport, &fx.src, &fx.dst, fx.dir);
    /* session 1 was the ClientHello */
    json_object *rep = it_relay_session_report(fx.relay, 2);
    cr_assert_eq(json_object_get_int64(it_jget(rep, "session")), 2);
    cr_assert_str_eq(json_object_get_string(it_jget(rep, "outcome")),
                     "completed");
    json_object_put(rep);
}

static guint
count_lines(const char *text, const char *needle)
{
    guint n = 0;
    g_auto(GStrv) lines = g_strsplit(text, "\n", -1);
    for (guint i = 0; lines[i]; i++)
        n += !needle || strstr(lines[i], needle) != NULL;
    return n;
}

Test(relay_strangers, accept_backs_off_at_the_fd_limit)
{
    g_autoptr(GError) err = NULL;
    guint16 dport = mp_qemu_pick_free_port(&err);
    const char *args[] = {"--handshake-timeout=500", NULL};

    cr_assert(dport, "%s", err ? err->message : "?");
    fx.relay = it_relay_start(fx.dir, dport, args);
    struct rlimit lim = {32, 32};
    cr_assert_eq(prlimit(fx.relay->pid, RLIMIT_NOFILE, &lim, NULL), 0, "%s",
                 g_strerror(errno));

    /* 100 connections held open for 1.5 s: most wait in the backlog */
    g_autoptr(GPtrArray) socks = g_ptr_array_new_with_free_func(g_object_unref);
    for (guint i = 0; i < 100; i++)
        g_ptr_array_add(socks, it_connect_port(fx.relay->port));
    g_usleep(1500 * 1000);
    g_autofree char *log = it_relay_log_text(fx.relay);
    guint warnings = count_lines(log, "Too many open files");
    guint lines = count_lines(log, NULL);
    g_printerr("relay-fd-limit warnings=%u log_lines=%u\n", warnings, lines);
    cr_assert_geq(warnings, 1, "the limit was not reached:\n%s", log);
    cr_assert_leq(warnings, 4, "accept() warned %u times in 1.5 s", warnings);
    /* a line per connection at most (accepted, refused) */
    cr_assert_leq(lines, 2 * 100 + 20, "%u log lines", lines);
    g_ptr_array_set_size(socks, 0);

    /* and a migration afterwards */
    it_relay_migrate_72(fx.relay, dport, &fx.src, &fx.dst, fx.dir);
}

/* ---- soak ---- */

static guint
relay_fds(GPid pid)
{
    g_autofree char *path = g_strdup_printf("/proc/%d/fd", pid);
    g_autoptr(GDir) d = g_dir_open(path, 0, NULL);
    guint n = 0;
    cr_assert_not_null(d, "%s", path);
    while (g_dir_read_name(d))
        n++;
    return n;
}

/* "socket:[123] /tmp/cap/s1-c0-to-dst.bin ...": what they are */
static char *
relay_fd_list(GPid pid)
{
    g_autofree char *path = g_strdup_printf("/proc/%d/fd", pid);
    g_autoptr(GDir) d = g_dir_open(path, 0, NULL);
    GString *out = g_string_new(NULL);
    const char *name;
    while (d && (name = g_dir_read_name(d))) {
        g_autofree char *link = g_build_filename(path, name, NULL);
        g_autofree char *target = g_file_read_link(link, NULL);
        if (!target || !strstr(target, "/capture/s"))
            g_string_append_printf(out, "%s ", target ? target : "?");
    }
    return g_string_free(out, FALSE);
}

static guint64
relay_rss_kib(GPid pid)
{
    g_autofree char *path = g_strdup_printf("/proc/%d/status", pid);
    g_autofree char *text = NULL;
    cr_assert(g_file_get_contents(path, &text, NULL, NULL), "%s", path);
    const char *p = strstr(text, "VmRSS:");
    cr_assert_not_null(p);
    return g_ascii_strtoull(p + 6, NULL, 10);
}

typedef struct {
    guint16 port;
    gint stop;
    guint sent; /* connections made */
} Hostile;

/* Connects again and again, sends one of the strangers' openings (or
 * nothing) and holds up to 40 connections open, until told to stop. */
static gpointer
hostile_clients(gpointer user_data)
{
    Hostile *h = user_data;
    g_autoptr(GPtrArray) held = g_ptr_array_new_with_free_func(g_object_unref);
    g_autoptr(GInetAddress) lo =
        g_inet_address_new_loopback(G_SOCKET_FAMILY_IPV4);
    g_autoptr(GSocketAddress) to = g_inet_socket_address_new(lo, h->port);
    g_autoptr(GInetAddress) other = g_inet_address_new_from_string("127.0.0.2");
    g_autoptr(GSocketAddress) from = g_inet_socket_address_new(other, 0);
    guint8 mfd_taken[64], mfd_garbage[64];

    mfd_init(mfd_taken, 0, 0);
    memset(mfd_garbage, 0xa5, sizeof mfd_garbage);
    memcpy(mfd_garbage, "\x11\x22\x33\x44", 4);
    while (!g_atomic_int_get(&h->stop)) {
        guint i = h->sent++;
        GSocket *s = g_socket_new(G_SOCKET_FAMILY_IPV4, G_SOCKET_TYPE_STREAM,
                                  G_SOCKET_PROTOCOL_TCP, NULL);
        if (i % 7 == 6)
            g_socket_bind(s, from, FALSE, NULL);
        if (!g_socket_connect(s, to, NULL, NULL)) {
            g_object_unref(s);
            g_usleep(20000);
            continue;
        }
        g_socket_set_blocking(s, FALSE);
        switch (i % 7) {
        case 0:
            g_socket_send(s, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", 27, NULL,
                          NULL);
            break;
        case 1:
            for (guint k = 0; k < 16; k++) {
                guint32 r = g_random_int();
                g_socket_send(s, (const char *)&r, 4, NULL, NULL);
            }
            break;
        case 2:
            g_socket_send(s, (const char *)header_cmd, 8, NULL, NULL);
            break;
        case 3: /* a TLS record header, then garbage (a whole stream
                 * header and record would be a next migration once this
                 * one ended: refused_during_multifd_72 sends it while one
                 * runs) */
            g_socket_send(s, "\x16\x03\xee\x12\x34\x56garbage", 13, NULL, NULL);
            break;
        case 4:
            g_socket_send(s, (const char *)mfd_garbage, 64, NULL, NULL);
            break;
        case 5:
            g_socket_send(s, (const char *)mfd_taken, 64, NULL, NULL);
            break;
        case 6: /* silent, from another address */
            break;
        }
        g_ptr_array_add(held, s);
        if (held->len > 40)
            g_ptr_array_remove_index(held, 0);
        g_usleep(20000);
    }
    return NULL;
}

/* A real multifd migration (7.2, 4 channels) while hostile clients
 * connect, send and hold connections throughout. */
Test(relay_strangers, soak_multifd_72, .timeout = 400)
{
    const char *args[] = {"--handshake-timeout=1000", NULL};

    start_multifd_migration(args, FALSE, 16 << 20);
    guint fds0 = relay_fds(fx.relay->pid);
    guint64 rss0 = relay_rss_kib(fx.relay->pid);
    Hostile h = {.port = fx.relay->port};
    GThread *t = g_thread_new("hostile", hostile_clients, &h);

    assert_migration_completed();
    g_atomic_int_set(&h.stop, 1);
    g_thread_join(t);

    /* the report is the migration's, written at its end */
    gint64 deadline = g_get_monotonic_time() + 20 * G_USEC_PER_SEC;
    json_object *rep = NULL;
    for (;;) {
        rep = json_object_from_file(fx.relay->report);
        if (rep
            && g_strcmp0(json_object_get_string(it_jget(rep, "outcome")),
                         "completed")
                   == 0)
            break;
        g_clear_pointer(&rep, json_object_put);
        g_autofree char *text = it_relay_log_text(fx.relay);
        cr_assert(g_get_monotonic_time() < deadline,
                  "no completed report; relay log:\n%s", text);
        g_usleep(100000);
    }
    cr_assert_eq(json_object_get_int64(it_jget(rep, "session")), 1);
    assert_report_is_the_migrations(rep);
    json_object_put(rep);

    /* every stranger gone: pending ones time out after 1 s */
    g_usleep(2500 * 1000);
    guint fds1 = relay_fds(fx.relay->pid);
    guint64 rss1 = relay_rss_kib(fx.relay->pid);
    g_autofree char *log = it_relay_log_text(fx.relay);
    guint lines = count_lines(log, NULL);
    g_printerr("relay-soak strangers=%u fds=%u->%u rss_kib=%" G_GUINT64_FORMAT
               "->%" G_GUINT64_FORMAT " log_lines=%u\n",
               h.sent, fds0, fds1, rss0, rss1, lines);
    cr_assert_geq(h.sent, 50, "too few strangers to mean anything");
    /* No fd per stranger, and the migration's capture files are closed
     * with its session. */
    g_autofree char *fd_list = relay_fd_list(fx.relay->pid);
    cr_assert_leq(fds1, fds0 + 2, "fds %u -> %u: %s", fds0, fds1, fd_list);
    if (!IT_ASAN)
        cr_assert_leq(rss1, rss0 + 48 * 1024,
                      "RSS %" G_GUINT64_FORMAT " -> %" G_GUINT64_FORMAT
                      " KiB",
                      rss0, rss1);
    cr_assert_null(strstr(log, "session 2"), "a stranger got a session");
    /* a line or two per stranger, not a flood */
    cr_assert_leq(lines, 3 * h.sent + 300, "%u log lines", lines);
}

/* ---- post-copy recovery through the relay that saw the migration ---- */

static void
qmp_uri(MpQemu *q, const char *cmd, const char *uri, gboolean resume)
{
    g_autoptr(GError) err = NULL;
    json_object *args = json_object_new_object();
    json_object_object_add(args, "uri", json_object_new_string(uri));
    if (resume)
        json_object_object_add(args, "resume", json_object_new_boolean(TRUE));
    json_object *ret = mp_qemu_execute(q, cmd, args, &err);
    json_object_put(args);
    cr_assert_not_null(ret, "%s: %s", cmd, err ? err->message : "?");
    json_object_put(ret);
}

static GSocket *
recv_bitmap_client(const char *from, const char *block)
{
    guint8 b[5 + 1 + 255] = {0x08, 0, 10, 0, 0};
    gsize n = strlen(block);
    b[4] = 1 + n;
    b[5] = n;
    memcpy(b + 6, block, n);
    GSocket *s = it_connect_from(from, fx.relay->port);
    it_send_all(s, b, 6 + n);
    return s;
}

/* The source pauses post-copy (migrate-pause): the relay's session waits
 * for its recovery.  Strangers' recovery commands (another address, a
 * block that is not the migration's) are refused; QEMU's own recovery
 * resumes the session, and the migration completes. */
Test(relay_strangers, recovery_matches_the_paused_session_72)
{
    g_autoptr(GError) err = NULL;

    fx.src =
        it_start_workload("7.2", NULL, 128, "mem=64M rate=5000 verify=1", NULL);
    fx.dst = it_start_destination("7.2", NULL, TRUE, NULL);
    guint16 dport = mp_qemu_pick_free_port(&err);
    cr_assert(dport, "%s", err ? err->message : "?");
    fx.relay = it_relay_start_full(fx.dir, dport, FALSE, NULL);
    it_cap(fx.src, "postcopy-ram");
    it_cap(fx.dst, "postcopy-ram");
    it_incoming(fx.dst, dport);
    it_set_int(fx.src, "max-bandwidth", 32 << 20);
    it_set_int(fx.src, "max-postcopy-bandwidth", 8 << 20);
    it_migrate(fx.src, fx.relay->port, FALSE);
    it_start_postcopy(fx.src, 500);
    it_wait_status(fx.src, "postcopy-active", 10000);
    g_usleep(500 * 1000);

    json_object *ret = mp_qemu_execute(fx.src, "migrate-pause", NULL, &err);
    cr_assert_not_null(ret, "migrate-pause: %s", err ? err->message : "?");
    json_object_put(ret);
    it_wait_status(fx.src, "postcopy-paused", 20000);
    it_wait_status(fx.dst, "postcopy-paused", 20000);
    it_relay_assert_log_has(fx.relay, "waiting for a recovery channel",
                            LOG_WAIT_MS);

    g_autoptr(GSocket) a = recv_bitmap_client("127.0.0.2", "pc.ram");
    it_assert_closed_by_relay(a, "recovery from another address");
    it_relay_assert_log_has(
        fx.relay, "another address than the migration's main channel",
        LOG_WAIT_MS);
    g_autoptr(GSocket) b = recv_bitmap_client(NULL, "xx.ram");
    it_assert_closed_by_relay(b, "recovery naming another block");
    it_relay_assert_log_has(fx.relay, "not the paused migration's",
                            LOG_WAIT_MS);

    /* QEMU's own: the destination listens at the relay's --to again */
    g_autofree char *duri = g_strdup_printf("tcp:127.0.0.1:%u", dport);
    qmp_uri(fx.dst, "migrate-recover", duri, FALSE);
    g_autofree char *suri = g_strdup_printf("tcp:127.0.0.1:%u", fx.relay->port);
    qmp_uri(fx.src, "migrate", suri, TRUE);
    json_object *info = it_wait_final(fx.src, MIGRATE_TIMEOUT_MS);
    g_autofree char *log = it_relay_log_text(fx.relay);
    cr_assert_str_eq(json_object_get_string(it_jget(info, "status")),
                     "completed", "%s\nrelay log:\n%s",
                     json_object_to_json_string(info), log);
    json_object_put(info);
    it_relay_assert_log_has(
        fx.relay, "session 1: recovery channel from 127.0.0.1", LOG_WAIT_MS);
    it_relay_assert_log_has(fx.relay, "session 1 completed", LOG_WAIT_MS);
    cr_assert_null(strstr(log, "session 2"), "%s", log);
    g_autofree char *console = NULL;
    g_usleep(1000 * 1000);
    g_file_get_contents(mp_qemu_console_path(fx.dst), &console, NULL, NULL);
    cr_assert(console && !strstr(console, "CORRUPT"),
              "the guest found corrupt pages:\n%s", console);
}
