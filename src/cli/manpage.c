/* manpage.c: migproxy(1) and migproxy-COMMAND(1) in roff (man(7)
 * macros), made from the same option tables and texts as --help
 * (commands.h), so that the two never disagree.
 *
 *   .TH MIGPROXY-RELAY 1 DATE "migproxy VERSION" "User Commands"
 *   NAME         migproxy-relay \- PURPOSE
 *   SYNOPSIS     migproxy relay [OPTION...] OPERANDS
 *   DESCRIPTION  the summary (--help above the options)
 *   OPTIONS      every entry that --help shows, and -h, --help
 *   HEADING...   each "Heading: ..." paragraph of the description (--help
 *                below the options) starts one; EXAMPLES goes last
 *   SEE ALSO     the other pages
 *
 * Text lines become filled roff text; lines indented by two spaces stay
 * as they are (.nf).  Every '-' is written \- (ASCII hyphen-minus when
 * rendered, so that options copied from the page work), '\' as \e, and a
 * line that would start with '.' or '\'' is guarded with \&.
 */
#include "config.h"
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <glib.h>
#include "commands.h"
#include "manpage.h"

/* Appends `len` bytes of `s` escaped for roff; non-ASCII characters as
 * \[uXXXX], so that the page needs no input encoding. */
static void
roff_escape(GString *o, const char *s, gssize len)
{
    const char *end = len < 0 ? s + strlen(s) : s + len;
    for (const char *p = s; p < end;) {
        guchar c = (guchar)*p;
        if (c >= 0x80) {
            gunichar u = g_utf8_get_char_validated(p, end - p);
            if (u == (gunichar)-1 || u == (gunichar)-2) {
                g_string_append_c(o, '?');
                p++;
                continue;
            }
            g_string_append_printf(o, "\\[u%04X]", u);
            p = g_utf8_next_char(p);
            continue;
        }
        if (c == '\\')
            g_string_append(o, "\\e");
        else if (c == '-')
            g_string_append(o, "\\-");
        else
            g_string_append_c(o, (char)c);
        p++;
    }
}

/* One input line of text: escaped, guarded, ended. */
static void
roff_line(GString *o, const char *s, gssize len)
{
    if (len != 0 && (*s == '.' || *s == '\''))
        g_string_append(o, "\\&");
    roff_escape(o, s, len);
    g_string_append_c(o, '\n');
}

/* One paragraph (no blank line inside): unindented lines filled, runs of
 * lines indented by two spaces kept as they are, indented. */
static void
roff_paragraph(GString *o, const char *para)
{
    g_auto(GStrv) lines = g_strsplit(para, "\n", -1);
    gboolean literal = FALSE;
    for (guint i = 0; lines[i]; i++) {
        const char *l = lines[i];
        gboolean indented = g_str_has_prefix(l, "  ");
        if (indented && !literal)
            g_string_append(o, ".RS 2\n.nf\n");
        else if (!indented && literal)
            g_string_append(o, ".fi\n.RE\n");
        literal = indented;
        roff_line(o, indented ? l + 2 : l, -1);
    }
    if (literal)
        g_string_append(o, ".fi\n.RE\n");
}

/* Paragraphs of `text` split at blank lines; .PP between them. */
static void
roff_text(GString *o, const char *text)
{
    g_auto(GStrv) paras = g_strsplit(text, "\n\n", -1);
    gboolean first = TRUE;
    for (guint i = 0; paras[i]; i++) {
        g_strchomp(paras[i]);
        if (!paras[i][0])
            continue;
        if (!first)
            g_string_append(o, ".PP\n");
        first = FALSE;
        roff_paragraph(o, paras[i]);
    }
}

/* A paragraph opening with "Heading:" (a capital, up to four words, a
 * colon, then a space or the end of the line): @return the heading's
 * length, 0 if it does not open with one. */
static gsize
heading_length(const char *para)
{
    const char *p = para;
    int words = 1;
    if (!g_ascii_isupper(*p))
        return 0;
    for (p++; *p && *p != ':'; p++) {
        if (*p == ' ')
            words++;
        else if (!g_ascii_isalpha(*p))
            return 0;
    }
    if (*p != ':' || words > 4 || (p[1] && p[1] != ' ' && p[1] != '\n'))
        return 0;
    return p - para;
}

typedef struct {
    char *name; /* upper case */
    GString *text;
} Section;

static void
section_free(gpointer p)
{
    Section *s = p;
    g_free(s->name);
    g_string_free(s->text, TRUE);
    g_free(s);
}

/* The description's sections: "Heading: rest" paragraphs start one,
 * other paragraphs go on with the section before them (or "NOTES"). */
static GPtrArray *
description_sections(const char *description)
{
    GPtrArray *sections = g_ptr_array_new_with_free_func(section_free);
    g_auto(GStrv) paras =
        g_strsplit(description ? description : "", "\n\n", -1);
    for (guint i = 0; paras[i]; i++) {
        g_strchomp(paras[i]);
        const char *body = paras[i];
        if (!*body)
            continue;
        gsize hl = heading_length(body);
        Section *cur = sections->len
                           ? g_ptr_array_index(sections, sections->len - 1)
                           : NULL;
        if (hl || !cur) {
            cur = g_new0(Section, 1);
            cur->name = hl ? g_ascii_strup(body, hl) : g_strdup("NOTES");
            cur->text = g_string_new(NULL);
            g_ptr_array_add(sections, cur);
            if (hl) {
                body += hl + 1;
                if (*body == ' ' || *body == '\n')
                    body++; /* keeps the indent of a line after "Heading:" */
            }
            if (!*body)
                continue;
        }
        if (cur->text->len)
            g_string_append(cur->text, ".PP\n");
        /* "Files: the report ..." reads "The report ..." under FILES */
        g_autofree char *text = g_strdup(body);
        if (hl)
            text[0] = g_ascii_toupper(text[0]);
        roff_paragraph(cur->text, text);
    }
    return sections;
}

/* .TP entry as --help shows it: "-l, --listen=HOST:PORT". */
static void
roff_option(GString *o, const GOptionEntry *e)
{
    g_string_append(o, ".TP\n");
    if (e->short_name)
        g_string_append_printf(o, "\\fB\\-%c\\fR, ", e->short_name);
    g_string_append(o, "\\fB\\-\\-");
    roff_escape(o, e->long_name, -1);
    g_string_append(o, "\\fR");
    if (e->arg != G_OPTION_ARG_NONE && e->arg_description) {
        g_string_append(o, "=\\fI");
        roff_escape(o, e->arg_description, -1);
        g_string_append(o, "\\fR");
    }
    g_string_append_c(o, '\n');
    roff_line(o, e->description ? e->description : "", -1);
}

static void
roff_options(GString *o, const GOptionEntry *entries, gboolean help)
{
    g_string_append(o, ".SH OPTIONS\n");
    for (const GOptionEntry *e = entries; e->long_name; e++) {
        if ((e->flags & G_OPTION_FLAG_HIDDEN)
            || strcmp(e->long_name, G_OPTION_REMAINING) == 0)
            continue;
        roff_option(o, e);
    }
    if (help) {
        /* GOption adds it to every command */
        const GOptionEntry h = {
            "help", 'h', 0, G_OPTION_ARG_NONE, NULL, "Show help options", NULL};
        roff_option(o, &h);
    }
}

static void
roff_header(GString *o, const char *page, const char *purpose)
{
    g_autofree char *title = g_ascii_strup(page, -1);
    g_autofree char *date = NULL;
    const char *epoch = g_getenv("SOURCE_DATE_EPOCH");
    if (epoch && *epoch) {
        g_autoptr(GDateTime) t =
            g_date_time_new_from_unix_utc(g_ascii_strtoll(epoch, NULL, 10));
        if (t)
            date = g_date_time_format(t, "%Y-%m-%d");
    }
    g_string_append(o, ".\\\" Generated by `migproxy --man` from the option "
                       "tables that --help shows; do not edit.\n");
    g_string_append(o, ".TH ");
    roff_escape(o, title, -1);
    g_string_append_printf(o, " 1 \"%s\" \"migproxy %s\" \"User Commands\"\n",
                           date ? date : "", MP_VERSION);
    /* ragged right, no hyphenation: option names and file names stay
     * whole, as in --help */
    g_string_append(o, ".nh\n.ad l\n.SH NAME\n");
    roff_escape(o, page, -1);
    g_string_append(o, " \\- ");
    roff_line(o, purpose, -1);
}

static void
roff_see_also(GString *o, const char *self)
{
    g_string_append(o, ".SH SEE ALSO\n");
    g_autoptr(GPtrArray) pages = g_ptr_array_new_with_free_func(g_free);
    if (self)
        g_ptr_array_add(pages, g_strdup("migproxy"));
    for (gsize i = 0; mp_commands[i]; i++)
        if (g_strcmp0(self, mp_commands[i]->name) != 0)
            g_ptr_array_add(
                pages, g_strconcat("migproxy-", mp_commands[i]->name, NULL));
    for (guint i = 0; i < pages->len; i++) {
        g_string_append(o, ".BR ");
        roff_escape(o, g_ptr_array_index(pages, i), -1);
        g_string_append_printf(o, " (1)%s\n", i + 1 < pages->len ? "," : "");
    }
    g_string_append(o, ".PP\n");
    roff_text(o, "migproxy's documents (README.md, docs/relay.md, "
                 "docs/operators.md, ...) are in its source tree; the "
                 "Debian package installs them in /usr/share/doc/migproxy/.");
}

static void
main_page(GString *o)
{
    roff_header(o, "migproxy", mp_main_purpose);
    g_string_append(o, ".SH SYNOPSIS\n.B migproxy\n\\fICOMMAND\\fR "
                       "[\\fIOPTION\\fR...]\n.br\n.B migproxy\n"
                       "\\fB\\-\\-help\\fR | \\fB\\-\\-version\\fR\n");
    g_string_append(o, ".SH DESCRIPTION\n");
    roff_text(o, mp_main_summary);
    g_string_append(o, ".PP\nEach command has its own options and manual "
                       "page, migproxy\\-\\fICOMMAND\\fR(1).\n");
    g_string_append(o, ".SH COMMANDS\n");
    for (gsize i = 0; mp_commands[i]; i++) {
        g_string_append(o, ".TP\n.B ");
        roff_escape(o, mp_commands[i]->name, -1);
        g_string_append_c(o, '\n');
        roff_line(o, mp_commands[i]->purpose, -1);
        g_string_append(o, ".br\nSee\n.BR migproxy\\-");
        roff_escape(o, mp_commands[i]->name, -1);
        g_string_append(o, " (1).\n");
    }
    roff_options(o, mp_main_entries, FALSE);
    g_string_append(o, ".SH EXIT STATUS\n"
                       "That of the command (see its page); 2 for an "
                       "unknown command or none.\n");
    roff_see_also(o, NULL);
}

static void
command_page(GString *o, const MpCommand *cmd)
{
    g_autofree char *page = g_strconcat("migproxy-", cmd->name, NULL);
    g_autofree gpointer store = g_malloc0(cmd->store_size);
    g_autofree GOptionEntry *entries = cmd->entries(store);

    roff_header(o, page, cmd->purpose);
    g_string_append(o, ".SH SYNOPSIS\n.B migproxy ");
    roff_escape(o, cmd->name, -1);
    g_string_append(o, "\n[\\fIOPTION\\fR...]");
    if (cmd->operands) {
        g_string_append(o, " \\fI");
        roff_escape(o, cmd->operands, -1);
        g_string_append(o, "\\fR");
    }
    g_string_append(o, "\n.SH DESCRIPTION\n");
    roff_text(o, cmd->summary);
    roff_options(o, entries, TRUE);

    g_autoptr(GPtrArray) sections = description_sections(cmd->description);
    const Section *examples = NULL;
    for (guint i = 0; i < sections->len; i++) {
        const Section *s = g_ptr_array_index(sections, i);
        if (strcmp(s->name, "EXAMPLES") == 0 && !examples) {
            examples = s; /* man-pages(7) puts them last but SEE ALSO */
            continue;
        }
        g_string_append_printf(o, ".SH %s\n%s", s->name, s->text->str);
    }
    if (examples)
        g_string_append_printf(o, ".SH EXAMPLES\n%s", examples->text->str);
    roff_see_also(o, cmd->name);
}

int
mp_manpage_print(const char *command, FILE *out)
{
    g_autoptr(GString) o = g_string_new(NULL);
    if (!command) {
        main_page(o);
    } else {
        const MpCommand *cmd = mp_command_find(command);
        if (!cmd) {
            fprintf(stderr, "migproxy: --man: no command '%s'\n", command);
            return 2;
        }
        command_page(o, cmd);
    }
    if (fwrite(o->str, 1, o->len, out) != o->len || fflush(out) != 0) {
        fprintf(stderr, "migproxy: --man: writing the page failed\n");
        return 1;
    }
    return 0;
}
