/* commands.c: the list of commands, the options of `migproxy` itself, and
 * the option context every command parses with. */
#include "config.h"
#include <string.h>
#include <glib.h>
#include "commands.h"

const MpCommand *const mp_commands[] = {
    &mp_cmd_analyze,
    &mp_cmd_report,
    &mp_cmd_demo,
    &mp_cmd_relay,
    &mp_cmd_source,
    &mp_cmd_dest,
    &mp_cmd_replay,
    &mp_cmd_plan,
    NULL,
};

const char mp_main_purpose[] =
    "parse, measure and speed up QEMU live migration";

const char mp_main_summary[] =
    "migproxy parses, measures and speeds up QEMU live migration.";

const GOptionEntry mp_main_entries[] = {
    {"help", 'h', 0, G_OPTION_ARG_NONE, NULL,
     "Show this help (with a COMMAND: the command's options)", NULL},
    {"version", 'V', 0, G_OPTION_ARG_NONE, NULL, "Show the version", NULL},
    {"man", 0, G_OPTION_FLAG_HIDDEN, G_OPTION_ARG_STRING, NULL,
     "Print the man page of migproxy, or of COMMAND, in roff", "[COMMAND]"},
    {"bash-completion", 0, G_OPTION_FLAG_HIDDEN, G_OPTION_ARG_NONE, NULL,
     "Print the bash completion script", NULL},
    {NULL},
};

const MpCommand *
mp_command_find(const char *name)
{
    for (gsize i = 0; mp_commands[i]; i++)
        if (strcmp(mp_commands[i]->name, name) == 0)
            return mp_commands[i];
    return NULL;
}

GOptionContext *
mp_command_context(const MpCommand *cmd, const GOptionEntry *entries)
{
    GOptionContext *oc = g_option_context_new(cmd->operands);
    g_option_context_set_summary(oc, cmd->summary);
    g_option_context_set_description(oc, cmd->description);
    g_option_context_add_main_entries(oc, entries, NULL);
    return oc;
}

void
mp_main_usage(FILE *out)
{
    fprintf(out, "Usage: migproxy COMMAND [OPTIONS...]\n\n%s\n\nCommands:\n",
            mp_main_summary);
    for (gsize i = 0; mp_commands[i]; i++)
        fprintf(out, "  %-10s %s\n", mp_commands[i]->name,
                mp_commands[i]->purpose);
    fprintf(out, "\nOptions:\n");
    for (const GOptionEntry *e = mp_main_entries; e->long_name; e++) {
        if (e->flags & G_OPTION_FLAG_HIDDEN)
            continue;
        g_autofree char *names =
            e->short_name
                ? g_strdup_printf("-%c, --%s", e->short_name, e->long_name)
                : g_strdup_printf("--%s", e->long_name);
        fprintf(out, "  %-16s %s\n", names, e->description);
    }
    fprintf(out, "\nRun 'migproxy COMMAND --help' for the options of a "
                 "command, 'man migproxy-COMMAND' for its manual.\n");
}
