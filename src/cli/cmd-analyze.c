/* cmd-analyze.c: `migproxy analyze FILE...`, offline analysis of stream
 * files as QEMU writes them with `migrate "exec:cat > FILE"`. */
#include "config.h"
#include <errno.h>
#include <stdio.h>
#include <glib.h>
#include "analysis.h"
#include "analyze-file.h"
#include "commands.h"
#include "parse-common.h"

/* Exit statuses (documented in --help and README.md) */
enum {
    EXIT_INVALID = 1,  /* invalid content, or the output failed */
    EXIT_USAGE = 2,
    EXIT_NO_INPUT = 3, /* a FILE cannot be opened or read */
    EXIT_FORMAT = 4,   /* a FILE is no known format (or one not supported) */
};

/* A qcow2 image analyzed without --snapshot: its snapshots. */
static void
print_qcow2(json_object *doc, FILE *out)
{
    json_object *q = json_object_object_get(doc, "qcow2");
    json_object *snaps = json_object_object_get(q, "snapshots");
    size_t n = json_object_array_length(snaps), with_state = 0;

    g_autofree char *cluster = g_format_size_full(
        json_object_get_uint64(json_object_object_get(q, "cluster_size")),
        G_FORMAT_SIZE_IEC_UNITS);
    g_autofree char *disk = g_format_size_full(
        json_object_get_uint64(json_object_object_get(q, "disk_size")),
        G_FORMAT_SIZE_IEC_UNITS);
    fprintf(out,
            "qcow2 image (version %d, clusters of %s, disk of %s): %zu "
            "snapshot%s\n",
            json_object_get_int(json_object_object_get(q, "version")), cluster,
            disk, n, n == 1 ? "" : "s");
    if (n)
        fprintf(out, "  %-6s %-24s %14s  %-19s\n", "ID", "NAME",
                "VM STATE", "DATE (UTC)");
    for (size_t i = 0; i < n; i++) {
        json_object *s = json_object_array_get_idx(snaps, i);
        g_autofree char *id = mp_printable(
            json_object_get_string(json_object_object_get(s, "id")));
        g_autofree char *name = mp_printable(
            json_object_get_string(json_object_object_get(s, "name")));
        guint64 vm = json_object_get_uint64(
            json_object_object_get(s, "vm_state_size"));
        g_autoptr(GDateTime) t = g_date_time_new_from_unix_utc(
            json_object_get_int64(json_object_object_get(s, "date")));
        g_autofree char *date =
            t ? g_date_time_format(t, "%Y-%m-%d %H:%M:%S") : g_strdup("?");
        g_autofree char *size = vm ? g_format_size_full(vm, G_FORMAT_SIZE_IEC_UNITS)
                                   : g_strdup("(disk only)");
        with_state += vm != 0;
        fprintf(out, "  %-6s %-24s %14s  %-19s\n", id, name, size, date);
    }
    if (with_state)
        fprintf(out, "Analyze the VM state of one: migproxy analyze "
                     "--snapshot NAME FILE\n");
    else
        fprintf(out, "No snapshot holds VM state (savevm makes them).\n");
}

/* The line a libvirt save image adds before the summary. */
static void
print_libvirt(json_object *doc, FILE *out)
{
    json_object *lv, *d, *v;

    if (!json_object_object_get_ex(doc, "libvirt", &lv))
        return;
    json_object_object_get_ex(lv, "domain", &d);
    g_autofree char *name =
        json_object_object_get_ex(d, "name", &v) && v
            ? mp_printable(json_object_get_string(v))
            : g_strdup("(no name)");
    g_autofree char *machine =
        json_object_object_get_ex(d, "machine", &v) && v
            ? mp_printable(json_object_get_string(v))
            : g_strdup("(not given)");
    guint64 mem = json_object_object_get_ex(d, "memory", &v) && v
                      ? json_object_get_uint64(v)
                      : 0;
    json_object_object_get_ex(lv, "format", &v);
    const char *format = json_object_get_string(v);
    json_object_object_get_ex(lv, "complete", &v);
    gboolean complete = json_object_get_boolean(v);
    json_object_object_get_ex(lv, "version", &v);
    fprintf(out,
            "libvirt save image (version %d, %s%s): domain %s, memory %"
            G_GUINT64_FORMAT " MiB, machine %s\n",
            json_object_get_int(v), format,
            complete ? "" : ", INCOMPLETE", name, mem >> 20, machine);
}

/* A packet capture: what the reader saw, before the first session's
 * summary (the other sessions follow it). */
static void
print_pcap(json_object *doc, FILE *out)
{
    json_object *p, *v;

    if (!json_object_object_get_ex(doc, "pcap", &p))
        return;
    json_object *sessions = json_object_object_get(p, "sessions");
    size_t n = json_object_array_length(sessions);
    fprintf(out,
            "packet capture (%s): %" G_GINT64_FORMAT " packets, %" G_GINT64_FORMAT
            " TCP connections, %zu migration session%s",
            json_object_get_string(json_object_object_get(p, "link_type")),
            json_object_get_int64(json_object_object_get(p, "packets")),
            json_object_get_int64(json_object_object_get(p, "connections")),
            n, n == 1 ? "" : "s");
    if (json_object_object_get_ex(p, "gaps", &v) && json_object_get_int64(v))
        fprintf(out, ", %" G_GINT64_FORMAT " gaps (%" G_GINT64_FORMAT " bytes)",
                json_object_get_int64(v),
                json_object_get_int64(json_object_object_get(p, "gap_bytes")));
    fputc('\n', out);
    /* each gap, and where its channel's parser resumed (docs/pcap.md) */
    json_object *gaps = json_object_object_get(p, "gap_list");
    for (size_t i = 0; i < json_object_array_length(gaps); i++) {
        json_object *g = json_object_array_get_idx(gaps, i);
        json_object *at = json_object_object_get(g, "resumed_offset");
        json_object *ms = json_object_object_get(g, "time_ms");
        fprintf(out,
                "  gap: session %d channel %d %s: %" G_GINT64_FORMAT
                " bytes missing at offset %" G_GINT64_FORMAT " (%.1f ms), ",
                json_object_get_int(json_object_object_get(g, "session")),
                json_object_get_int(json_object_object_get(g, "channel")),
                json_object_get_string(json_object_object_get(g, "dir")),
                json_object_get_int64(json_object_object_get(g, "bytes")),
                json_object_get_int64(json_object_object_get(g, "offset")),
                ms ? json_object_get_double(ms) : 0.0);
        if (at)
            fprintf(out,
                    "resumed at offset %" G_GINT64_FORMAT " (%" G_GINT64_FORMAT
                    " bytes skipped)\n",
                    json_object_get_int64(at),
                    json_object_get_int64(
                        json_object_object_get(g, "skipped_bytes")));
        else
            fprintf(out, "not resumed: partial from there on\n");
    }
    for (size_t i = 0; i < n; i++) {
        json_object *s = json_object_array_get_idx(sessions, i);
        fprintf(out, "  session %d: to %s, %d channels, %s\n",
                json_object_get_int(json_object_object_get(s, "session")),
                json_object_get_string(json_object_object_get(s, "server")),
                json_object_get_int(json_object_object_get(s, "channels")),
                json_object_get_string(json_object_object_get(s, "outcome")));
    }
    if (n)
        fprintf(out, "Session 1:\n");
}

/* The sessions of a capture after its first. */
static void
print_more_sessions(json_object *doc, FILE *out)
{
    json_object *more;
    if (!json_object_object_get_ex(doc, "more_sessions", &more))
        return;
    for (size_t i = 0; i < json_object_array_length(more); i++) {
        json_object *s = json_object_array_get_idx(more, i);
        fprintf(out, "\nSession %d:\n",
                json_object_get_int(json_object_object_get(s, "session")));
        mp_analysis_print(s, out);
    }
}

typedef struct {
    MpAnalyzeOptions opt;
    GStrv files;
} AnalyzeArgs;

static GOptionEntry *
analyze_entries(gpointer store)
{
    AnalyzeArgs *a = store;
    const GOptionEntry entries[] = {
        {"json", 'j', 0, G_OPTION_ARG_NONE, &a->opt.json,
         "Print one JSON document instead of the summary", NULL},
        {"dump-ram", 'd', 0, G_OPTION_ARG_FILENAME, &a->opt.dump_ram,
         "Write each RAM block, as the destination would hold it after "
         "loading the stream, to a file in DIR (plus DIR/index.json)",
         "DIR"},
        {"events", 'e', 0, G_OPTION_ARG_NONE, &a->opt.events,
         "Print every record (offset, length, kind, fields), one per line",
         NULL},
        {"no-vmdesc", 0, 0, G_OPTION_ARG_NONE, &a->opt.no_vmdesc,
         "Do not slice device sections with the vmdesc at the file's end",
         NULL},
        {"snapshot", 's', 0, G_OPTION_ARG_STRING, &a->opt.snapshot,
         "qcow2 image: analyze the VM state of this internal snapshot "
         "(name or id; without it, the snapshots are listed)",
         "NAME"},
        {"quiet", 'q', 0, G_OPTION_ARG_NONE, &a->opt.quiet,
         "No progress display on stderr", NULL},
        /* (the synopsis names FILE... once, from .operands) */
        {G_OPTION_REMAINING, 0, 0, G_OPTION_ARG_FILENAME_ARRAY, &a->files, NULL,
         NULL},
        {NULL},
    };
    return g_memdup2(entries, sizeof(entries));
}

static int
analyze_run(int argc, char **argv)
{
    AnalyzeArgs a = {0};
    g_autofree GOptionEntry *entries = analyze_entries(&a);
    g_autoptr(GOptionContext) oc = mp_command_context(&mp_cmd_analyze, entries);
    g_autoptr(GError) err = NULL;

    gboolean parsed = g_option_context_parse(oc, &argc, &argv, &err);
    /* owned here, whatever the parse left in them */
    g_auto(GStrv) files = a.files;
    g_autofree char *dump_ram = a.opt.dump_ram;
    g_autofree char *snapshot = a.opt.snapshot;
    MpAnalyzeOptions opt = a.opt; /* borrows dump_ram, snapshot */
    if (!parsed) {
        fprintf(stderr, "migproxy analyze: %s\n(see migproxy analyze --help)\n",
                err->message);
        return EXIT_USAGE;
    }
    if (!files || !files[0]) {
        fprintf(stderr, "migproxy analyze: no FILE given\n"
                        "(see migproxy analyze --help)\n");
        return EXIT_USAGE;
    }
    if (opt.dump_ram && g_strv_length(files) > 1) {
        fprintf(stderr, "migproxy analyze: --dump-ram takes a single FILE\n");
        return EXIT_USAGE;
    }

    int status = 0, out_errno = 0;
    json_object *all = json_object_new_array();
    for (guint i = 0; files[i]; i++) {
        gboolean ok;
        json_object *doc = mp_analyze_file(files[i], &opt, &ok), *ie;
        /* nothing analyzed: one line, no summary */
        gboolean no_input = json_object_object_get_ex(doc, "input_error", &ie);
        int file_status = ok ? 0 : EXIT_INVALID;
        if (no_input) {
            const char *kind = json_object_get_string(ie);
            file_status = g_str_equal(kind, "open")     ? EXIT_NO_INPUT
                          : g_str_equal(kind, "format") ? EXIT_FORMAT
                                                        : EXIT_INVALID;
        }
        status = MAX(status, file_status);
        if (opt.json) {
            json_object_array_add(all, doc);
            if (no_input) {
                /* the document says it; a line says it to whoever reads
                 * the terminal */
                json_object *errs;
                json_object_object_get_ex(doc, "errors", &errs);
                g_autofree char *e = mp_printable(json_object_get_string(
                    json_object_array_get_idx(errs, 0)));
                fprintf(stderr, "migproxy analyze: %s\n", e);
            }
            continue;
        }
        if (no_input) {
            json_object *errs;
            json_object_object_get_ex(doc, "errors", &errs);
            g_autofree char *e = mp_printable(
                json_object_get_string(json_object_array_get_idx(errs, 0)));
            fprintf(stderr, "migproxy analyze: %s\n", e);
            json_object_put(doc);
            continue;
        }
        if (!opt.events) {
            if (files[1])
                printf("%s== %s ==\n", i ? "\n" : "", files[i]);
            if (json_object_object_get_ex(doc, "qcow2", NULL)) {
                print_qcow2(doc, stdout);
            } else {
                print_libvirt(doc, stdout);
                print_pcap(doc, stdout);
                mp_analysis_print(doc, stdout);
                print_more_sessions(doc, stdout);
            }
        }
        json_object *errs, *more;
        if (json_object_object_get_ex(doc, "errors", &errs))
            for (size_t k = 0; k < json_object_array_length(errs); k++) {
                /* (errors quote names from the stream) */
                g_autofree char *e = mp_printable(
                    json_object_get_string(json_object_array_get_idx(errs, k)));
                fprintf(stderr, "migproxy analyze: %s: %s\n", files[i], e);
            }
        /* a capture's other sessions */
        if (json_object_object_get_ex(doc, "more_sessions", &more))
            for (size_t m = 0; m < json_object_array_length(more); m++) {
                json_object *s = json_object_array_get_idx(more, m);
                if (!json_object_object_get_ex(s, "errors", &errs))
                    continue;
                for (size_t k = 0; k < json_object_array_length(errs); k++) {
                    g_autofree char *e = mp_printable(json_object_get_string(
                        json_object_array_get_idx(errs, k)));
                    fprintf(stderr, "migproxy analyze: %s: session %d: %s\n",
                            files[i],
                            json_object_get_int(
                                json_object_object_get(s, "session")),
                            e);
                }
            }
        json_object_put(doc);
    }
    if (opt.json) {
        json_object *out = json_object_array_length(all) == 1
                               ? json_object_array_get_idx(all, 0)
                               : all;
        if (puts(json_object_to_json_string_ext(
                out, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE))
            == EOF)
            out_errno = errno;
    }
    json_object_put(all);
    /* A full disk or a file system that fails on close: an error and a
     * non-zero exit, not a silently short output (a closed pipe ends the
     * command with SIGPIPE, as for any filter). */
    errno = 0;
    gboolean bad_output = fflush(stdout) != 0 || ferror(stdout);
    int e = errno ? errno : out_errno;
    if (fclose(stdout) != 0 && !bad_output) {
        bad_output = TRUE;
        e = errno;
    }
    if (bad_output) {
        fprintf(stderr, "migproxy analyze: writing the output: %s\n",
                e ? g_strerror(e) : "write error");
        status = MAX(status, EXIT_INVALID);
    }
    return status;
}

const MpCommand mp_cmd_analyze = {
    .name = "analyze",
    .purpose = "analyze captured migration streams (summary, JSON, RAM images)",
    .operands = "FILE...",
    .summary = "Analyze QEMU migration stream files: what the stream holds, "
            "page by page.\n\n"
            "FILE is one of (told by content, not by name):\n"
            "  a stream as QEMU writes it with (qemu) migrate \"exec:cat > FILE\",\n"
            "    plain or compressed with zstd;\n"
            "  a libvirt save image (virsh save, virsh managedsave), raw or\n"
            "    compressed by save_image_format (gzip, bzip2, xz, lzop, zstd),\n"
            "    or sparse (mapped-ram);\n"
            "  a mapped-ram file (QEMU 9+ migrate \"file:FILE\" with the\n"
            "    mapped-ram capability, with or without multifd);\n"
            "  a qcow2 image: its internal snapshots (savevm) are listed,\n"
            "    --snapshot NAME analyzes one's VM state;\n"
            "  a relay capture directory (migproxy relay --capture);\n"
            "  a packet capture, pcap or pcapng (tcpdump -i lo -w FILE, tshark):\n"
            "    its TCP connections reassembled, its migrations found by content\n"
            "    on any port, one summary per migration session.",
    .description =
        "Examples:\n"
            "  migproxy analyze vm.mig                  summary\n"
            "  migproxy analyze --json vm.mig.zst | jq .ram.pages\n"
            "  migproxy analyze --dump-ram out/ vm.mig  RAM images; then\n"
            "      cmp out/pc.ram guest-memory.bin\n"
            "  migproxy analyze --events vm.mig | less  every record\n"
            "  migproxy analyze --json f.save | jq .libvirt.domain\n"
            "  migproxy analyze disk.qcow2              its snapshots\n"
            "  migproxy analyze --snapshot snap1 --dump-ram out/ disk.qcow2\n"
            "  tcpdump -i lo -s 0 -w mig.pcap tcp port 4444 &  (then migrate)\n"
            "  migproxy analyze mig.pcap                sessions, rounds, downtime\n\n"
            "Exit status: 0 if every file parsed cleanly; 1 if a file holds "
            "an invalid stream or a malformed header, or the output "
            "(standard output, --dump-ram) could not be written; 2 on usage "
            "errors; 3 if a file cannot be opened or read; 4 if a file is "
            "not a known format (a pcap of a link type migproxy does not "
            "decode included).  In a packet capture, bytes missing from it "
            "(a gap) are reported and parsing resumes at the next record it "
            "trusts (docs/pcap.md); a gap it cannot resume after, or a "
            "snaplen that cut packets, exits 1.  Cases 3 and 4 "
            "print one line and no summary.  With "
            "several files, the highest status.",
    .entries = analyze_entries,
    .store_size = sizeof(AnalyzeArgs),
    .run = analyze_run,
};
