/* main.c: migproxy entry point; dispatches to the subcommands. */
#include "config.h"
#include <stdio.h>
#include <string.h>
#include <glib.h>
#include "commands.h"

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} Command;

static const Command commands[] = {
    {"analyze", mp_cmd_analyze,
     "analyze captured migration streams (summary, JSON, RAM images)"},
    {"demo", mp_cmd_demo,
     "migrate a sample guest live between two local QEMUs and analyze it"},
    {"relay", mp_cmd_relay,
     "relay a live migration between two QEMUs, measuring it on the wire"},
};

static void
usage(FILE *out)
{
    fprintf(out,
            "Usage: migproxy COMMAND [OPTIONS...]\n\n"
            "migproxy parses, measures and speeds up QEMU live migration.\n\n"
            "Commands:\n");
    for (gsize i = 0; i < G_N_ELEMENTS(commands); i++)
        fprintf(out, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(out, "\nOptions:\n"
                 "  -h, --help     show this help\n"
                 "  --version      show the version\n\n"
                 "Run 'migproxy COMMAND --help' for the options of a "
                 "command.\n");
}

int
main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "-V") == 0) {
        printf("migproxy %s\n", MP_VERSION);
        return 0;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0
        || strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return 0;
    }
    for (gsize i = 0; i < G_N_ELEMENTS(commands); i++) {
        if (strcmp(argv[1], commands[i].name) == 0) {
            /* argv[0] becomes "migproxy COMMAND" for the option parser */
            g_autofree char *prog = g_strdup_printf("migproxy %s", argv[1]);
            g_set_prgname(prog);
            argv[1] = prog;
            return commands[i].run(argc - 1, argv + 1);
        }
    }
    fprintf(stderr, "migproxy: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
