/* main.c: migproxy entry point; dispatches to the commands (commands.c). */
#include "config.h"
#include <stdio.h>
#include <string.h>
#include <glib.h>
#include "commands.h"
#include "completion.h"
#include "manpage.h"

static gboolean
is_arg(const char *arg, const char *long_name, const char *short_name)
{
    return strcmp(arg, long_name) == 0
           || (short_name && strcmp(arg, short_name) == 0);
}

int
main(int argc, char **argv)
{
    if (argc < 2) {
        mp_main_usage(stderr);
        return 2;
    }
    if (is_arg(argv[1], "--version", "-V")) {
        printf("migproxy %s\n", MP_VERSION);
        return 0;
    }
    if (is_arg(argv[1], "--help", "-h") || strcmp(argv[1], "help") == 0) {
        mp_main_usage(stdout);
        return 0;
    }
    /* Hidden: the build writes the man pages and the completion with
     * these (man/meson.build, dist/meson.build). */
    if (strcmp(argv[1], "--man") == 0 && argc <= 3)
        return mp_manpage_print(argc == 3 ? argv[2] : NULL, stdout);
    if (strcmp(argv[1], "--bash-completion") == 0 && argc == 2)
        return mp_completion_print(stdout);

    const MpCommand *cmd = mp_command_find(argv[1]);
    if (!cmd) {
        fprintf(stderr, "migproxy: unknown command '%s'\n\n", argv[1]);
        mp_main_usage(stderr);
        return 2;
    }
    /* argv[0] becomes "migproxy COMMAND" for the option parser */
    g_autofree char *prog = g_strdup_printf("migproxy %s", argv[1]);
    g_set_prgname(prog);
    argv[1] = prog;
    return cmd->run(argc - 1, argv + 1);
}
