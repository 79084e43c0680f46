/* cmd-replay.c: `migproxy replay CAPTURE --to HOST:PORT`, a captured
 * migration played into a destination QEMU (src/offline/replay.c,
 * docs/replay.md). */
#include "config.h"
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <glib.h>
#include "analysis.h"
#include "commands.h"
#include "parse-common.h"
#include "rate-pacer.h"
#include "replay.h"

/* Exit statuses (documented in --help and docs/replay.md); 1 to 4 as
 * analyze's */
enum {
    EXIT_INVALID = 1, /* the input broke off (a gap, a bad file) */
    EXIT_USAGE = 2,
    EXIT_NO_INPUT = 3, /* CAPTURE cannot be opened or read */
    EXIT_FORMAT = 4,   /* not a format replay reads */
    EXIT_REFUSED = 5,  /* the destination did not accept the stream */
};

#define DEFAULT_WAIT_S 60

typedef struct {
    char *to, *rate, *speed;
    gint session, wait_s;
    gboolean json, quiet;
    GStrv files;
} ReplayArgs;

static GOptionEntry *
replay_entries(gpointer store)
{
    ReplayArgs *a = store;
    const GOptionEntry entries[] = {
        {"to", 't', 0, G_OPTION_ARG_STRING, &a->to,
         "The destination QEMU's -incoming address (required)", "HOST:PORT"},
        {"rate", 'r', 0, G_OPTION_ARG_STRING, &a->rate,
         "Send at most RATE: bytes per second with an optional K, M or G "
         "(powers of 1024: 100M), or as tc writes rates (800mbit, 12mbps); "
         "\"max\": as fast as the destination takes it. Given alone, the "
         "recorded times are not followed",
         "RATE"},
        {"speed", 's', 0, G_OPTION_ARG_STRING, &a->speed,
         "Follow the recorded times X times faster (2: in half the time, "
         "0.5: twice as slow; capture directories and packet captures, "
         "which have times). Default 1, unless --rate is given",
         "X"},
        {"session", 0, 0, G_OPTION_ARG_INT, &a->session,
         "A capture directory's session N (default: its first)", "N"},
        {"wait", 'w', 0, G_OPTION_ARG_INT, &a->wait_s,
         "After the last byte, wait at most SECONDS for the destination's "
         "answer (default 60)",
         "SECONDS"},
        {"json", 'j', 0, G_OPTION_ARG_NONE, &a->json,
         "Print one JSON document instead of the summary "
         "(docs/schema/replay.schema.json)",
         NULL},
        {"quiet", 'q', 0, G_OPTION_ARG_NONE, &a->quiet, "No progress on stderr",
         NULL},
        /* (the synopsis names CAPTURE once, from .operands) */
        {G_OPTION_REMAINING, 0, 0, G_OPTION_ARG_FILENAME_ARRAY, &a->files, NULL,
         NULL},
        {NULL},
    };
    return g_memdup2(entries, sizeof(entries));
}

/* --rate: "max", bytes per second (K/M/G), or a tc rate.  @return bytes
 * per second, 0 for max; FALSE with *error set. */
static gboolean
parse_rate(const char *text, guint64 *rate, GError **error)
{
    g_autoptr(GError) size_err = NULL;

    if (g_ascii_strcasecmp(text, "max") == 0) {
        *rate = 0;
        return TRUE;
    }
    if ((*rate = mp_size_parse(text, &size_err)))
        return TRUE;
    if ((*rate = mp_rate_parse(text, NULL)))
        return TRUE;
    g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                "'%s' is no rate: bytes per second (1000000, 100K, 100M, 1G), "
                "a tc rate (800mbit, 12mbps) or max",
                text);
    return FALSE;
}

static void
print_summary(json_object *doc, FILE *out)
{
    json_object *rp = json_object_object_get(doc, "replay"), *v;
    json_object *ret = json_object_object_get(rp, "return_path");

    mp_analysis_print(doc, out);
    fprintf(out, "\nReplay of %s to %s",
            json_object_get_string(json_object_object_get(rp, "input")),
            json_object_get_string(json_object_object_get(rp, "to")));
    if (json_object_get_boolean(json_object_object_get(rp, "paced")))
        fprintf(out, ", paced as recorded (speed %g)",
                json_object_get_double(json_object_object_get(rp, "speed")));
    if ((v = json_object_object_get(rp, "rate"))) {
        g_autofree char *r = g_format_size(json_object_get_uint64(v));
        fprintf(out, ", at most %s/s", r);
    }
    fputc('\n', out);
    json_object *chans = json_object_object_get(rp, "channels");
    guint64 bytes = json_object_get_uint64(json_object_object_get(rp, "bytes"));
    double ms =
        json_object_get_double(json_object_object_get(rp, "duration_ms"));
    double send_ms =
        json_object_get_double(json_object_object_get(rp, "send_ms"));
    g_autofree char *size = g_format_size(bytes);
    g_autofree char *rate =
        g_format_size(send_ms > 0 ? bytes / (send_ms / 1000) : 0);
    fprintf(out,
            "  sent:       %s on %zu channel%s in %.3f s (%s/s); the verdict "
            "after %.3f s\n",
            size, json_object_array_length(chans),
            json_object_array_length(chans) == 1 ? "" : "s", send_ms / 1000,
            rate, ms / 1000);
    if ((v = json_object_object_get(doc, "downtime_ms")))
        fprintf(out, "  downtime:   %.1f ms (as the wire shows it)\n",
                json_object_get_double(v));
    fprintf(
        out,
        "  return path: %s, %" G_GUINT64_FORMAT " messages, %" G_GUINT64_FORMAT
        " page requests\n",
        json_object_get_boolean(json_object_object_get(ret, "opened"))
            ? "open"
            : "not opened by the stream",
        json_object_get_uint64(json_object_object_get(ret, "messages")),
        json_object_get_uint64(json_object_object_get(ret, "page_requests")));
    json_object *pa = json_object_object_get(rp, "page_answers");
    if (json_object_get_uint64(json_object_object_get(ret, "page_requests")))
        fprintf(out,
                "  page requests: %" G_GUINT64_FORMAT " answered ahead of "
                "the capture's order, %" G_GUINT64_FORMAT " in its order; "
                "%" G_GUINT64_FORMAT " pages not in the capture\n",
                json_object_get_uint64(
                    json_object_object_get(pa, "requests_early")),
                json_object_get_uint64(
                    json_object_object_get(pa, "requests_in_order")),
                json_object_get_uint64(
                    json_object_object_get(pa, "pages_not_in_capture")));
    g_autofree char *verdict = mp_printable(
        json_object_get_string(json_object_object_get(rp, "verdict")));
    fprintf(
        out, "  verdict:    %s: %s\n",
        json_object_get_boolean(json_object_object_get(rp, "accepted"))
            ? (json_object_get_boolean(json_object_object_get(rp, "confirmed"))
                   ? "ACCEPTED"
                   : "ACCEPTED (unconfirmed)")
            : "NOT ACCEPTED",
        verdict);
}

static int
replay_run(int argc, char **argv)
{
    ReplayArgs a = {.wait_s = DEFAULT_WAIT_S};
    g_autofree GOptionEntry *entries = replay_entries(&a);
    g_autoptr(GOptionContext) oc = mp_command_context(&mp_cmd_replay, entries);
    g_autoptr(GError) err = NULL;

    gboolean parsed = g_option_context_parse(oc, &argc, &argv, &err);
    g_auto(GStrv) files = a.files;
    g_autofree char *to = a.to, *rate_text = a.rate, *speed_text = a.speed;
    if (!parsed) {
        fprintf(stderr, "migproxy replay: %s\n(see migproxy replay --help)\n",
                err->message);
        return EXIT_USAGE;
    }
    if (!files || !files[0] || files[1]) {
        fprintf(stderr, "migproxy replay: give one CAPTURE\n"
                        "(see migproxy replay --help)\n");
        return EXIT_USAGE;
    }
    if (!to) {
        fprintf(stderr, "migproxy replay: --to HOST:PORT is required (the "
                        "destination's -incoming address)\n");
        return EXIT_USAGE;
    }
    MpReplayOptions opt = {
        .to = to,
        .speed = -1,
        .session = a.session > 0 ? a.session : 0,
        .wait_s = a.wait_s > 0 ? a.wait_s : DEFAULT_WAIT_S,
        .progress = !a.quiet && !a.json,
    };
    if (a.session < 0) {
        fprintf(stderr, "migproxy replay: --session: a session number (1, "
                        "2, ...)\n");
        return EXIT_USAGE;
    }
    if (rate_text) {
        if (!parse_rate(rate_text, &opt.rate, &err)) {
            fprintf(stderr, "migproxy replay: --rate: %s\n", err->message);
            return EXIT_USAGE;
        }
        opt.speed = 0; /* the rate rules, unless --speed says otherwise */
    }
    if (speed_text) {
        char *end;
        double x = g_ascii_strtod(speed_text, &end);
        if (*end || end == speed_text || !isfinite(x) || x <= 0 || x > 1e6) {
            fprintf(stderr,
                    "migproxy replay: --speed: '%s' is no factor "
                    "(a number above 0: 1, 2, 0.5)\n",
                    speed_text);
            return EXIT_USAGE;
        }
        opt.speed = x;
    }

    MpReplayStatus st;
    json_object *doc = mp_replay_run(files[0], &opt, &st), *errs;
    int status = st == MP_REPLAY_ACCEPTED   ? 0
                 : st == MP_REPLAY_INVALID  ? EXIT_INVALID
                 : st == MP_REPLAY_NO_INPUT ? EXIT_NO_INPUT
                 : st == MP_REPLAY_FORMAT   ? EXIT_FORMAT
                                            : EXIT_REFUSED;
    gboolean nothing_sent = !json_object_object_get_ex(doc, "replay", NULL);
    if (a.json)
        puts(json_object_to_json_string_ext(
            doc, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE));
    else if (!nothing_sent)
        print_summary(doc, stdout);
    if (json_object_object_get_ex(doc, "errors", &errs))
        for (size_t k = 0; k < json_object_array_length(errs); k++) {
            g_autofree char *e = mp_printable(
                json_object_get_string(json_object_array_get_idx(errs, k)));
            fprintf(stderr, "migproxy replay: %s\n", e);
        }
    json_object_put(doc);
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "migproxy replay: writing the output: %s\n",
                g_strerror(errno));
        status = MAX(status, EXIT_INVALID);
    }
    return status;
}

const MpCommand mp_cmd_replay = {
    .name = "replay",
    .purpose = "play a captured migration into a destination QEMU",
    .operands = "CAPTURE",
    .summary =
        "Play a captured migration into a destination QEMU started with "
        "-incoming, standing in for its source: every channel in its "
        "recorded order, paced as recorded, at a rate or as fast as "
        "possible, the destination's return path read all along. Then say "
        "whether the destination accepted the stream, how long it took and "
        "the downtime as the wire showed it. Check a captured stream "
        "against another QEMU version, or time it at a bandwidth.\n\n"
        "CAPTURE is one of (told by content, not by name):\n"
        "  a stream file (migrate \"exec:cat > FILE\", plain or zstd, or a\n"
        "    libvirt save image): one main channel, no times: sent as fast\n"
        "    as possible unless --rate;\n"
        "  a relay capture directory (migproxy relay --capture DIR): every\n"
        "    channel (multifd, post-copy preempt), paced as recorded;\n"
        "  a packet capture (tcpdump -i lo -s 0 -w FILE): its first\n"
        "    migration, paced as recorded.\n\n"
        "The destination must be set up as the captured one was: the same "
        "machine type and memory size, the same migration capabilities "
        "(multifd and its channel count, postcopy-ram, "
        "postcopy-preempt, return-path) and the same -uuid if the source "
        "had one. A post-copy capture is replayed whole: the destination's "
        "page requests are counted and timed, and answered at once from the "
        "pages the capture holds (a capture directory's; a packet "
        "capture's in the capture's order; docs/replay.md).",
    .description =
        "Examples:\n"
        "  # the destination, paused, waiting for the stream\n"
        "  qemu-system-x86_64 -M pc-q35-7.2 -m 1G -S -incoming "
        "tcp:127.0.0.1:5555 ...\n"
        "  migproxy replay capdir/ --to 127.0.0.1:5555          as recorded\n"
        "  migproxy replay capdir/ --to 127.0.0.1:5555 --speed 4   4x faster\n"
        "  migproxy replay vm.mig --to 127.0.0.1:5555 --rate 100M  at 100 "
        "MiB/s\n"
        "  migproxy replay mig.pcap --to 127.0.0.1:5555 --rate max --json | jq "
        ".replay\n\n"
        "Verdict: ACCEPTED when the destination said SHUT 0 on its return "
        "path (captures made with the return-path capability or "
        "post-copy); ACCEPTED (unconfirmed) when the stream opened no "
        "return path and the destination took every byte, then closed "
        "(QEMU closes the same way when the last device state fails: check "
        "its log or query-migrate); NOT ACCEPTED when it closed or reset a "
        "channel with bytes still to send, said SHUT 1, closed without "
        "SHUT, could not be reached, or did not answer within --wait.\n\n"
        "Exit status: 0 if the destination accepted the stream; 1 if the "
        "input broke off (a gap in a packet capture, an unreadable chunk) "
        "or the output failed; 2 on usage errors; 3 if CAPTURE cannot be "
        "opened or read; 4 if it is no format replay reads (mapped-ram "
        "files and qcow2 images are not: QEMU does not load them over a "
        "socket); 5 if the destination did not accept the stream.",
    .entries = replay_entries,
    .store_size = sizeof(ReplayArgs),
    .run = replay_run,
};
