/* commands.h: the commands of the migproxy binary, each with the option
 * table and texts that its --help, its man page (manpage.c) and the bash
 * completion (completion.c) are all made from, so that they never
 * disagree. */
#pragma once

#include <stdio.h>
#include <glib.h>

typedef struct MpCommand MpCommand;

struct MpCommand {
    const char *name;     /* "relay" */
    const char *purpose;  /* one line: `migproxy --help`, the man page's NAME */
    const char *operands; /* after the options in the synopsis: "FILE...";
                           * NULL if none */
    /* --help above the options, the man page's DESCRIPTION: paragraphs
     * split by a blank line; lines indented by two spaces are shown as
     * they are (commands, examples). */
    const char *summary;
    /* --help below the options.  As the summary, and a paragraph that
     * opens with "Heading:" ("Examples:", "Exit status: 0 if ...") starts
     * the man page's section HEADING. */
    const char *description;
    /* @return the option table, ending with a {NULL} entry, whose
     * arg_data point into `store` (store_size zeroed bytes, the command's
     * own argument struct); the caller frees it with g_free().  The man
     * page and the completion read only names, flags and texts. */
    GOptionEntry *(*entries)(gpointer store);
    gsize store_size;
    /* @return the process exit status: 0 ok, 1 failure, 2 usage. */
    int (*run)(int argc, char **argv);
};

extern const MpCommand mp_cmd_analyze;
extern const MpCommand mp_cmd_report;
extern const MpCommand mp_cmd_demo;
extern const MpCommand mp_cmd_relay;
extern const MpCommand mp_cmd_source;
extern const MpCommand mp_cmd_dest;
extern const MpCommand mp_cmd_replay;
extern const MpCommand mp_cmd_plan;

/* Every command, in the order `migproxy --help` lists them; NULL ends. */
extern const MpCommand *const mp_commands[];

/* The options of `migproxy` itself (before any command), ending with a
 * {NULL} entry; arg_data are NULL: main.c reads argv itself.  Hidden
 * ones (--man, --bash-completion) build the package's files. */
extern const GOptionEntry mp_main_entries[];
extern const char mp_main_summary[];
extern const char mp_main_purpose[]; /* the man page's NAME */

/* @return the command named `name`, or NULL. */
const MpCommand *mp_command_find(const char *name);

/* @return the option context a command parses its arguments with:
 * `entries` (caller keeps ownership; they must outlive the context),
 * its operands, summary and description.  Free with
 * g_option_context_free(). */
GOptionContext *mp_command_context(const MpCommand *cmd,
                                   const GOptionEntry *entries);

/* `migproxy --help`: the commands and the main options. */
void mp_main_usage(FILE *out);
