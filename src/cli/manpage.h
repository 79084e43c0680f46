/* manpage.h: the man pages, made from the commands' option tables. */
#pragma once

#include <stdio.h>

/* Writes migproxy(1) (`command` NULL) or migproxy-COMMAND(1) in roff to
 * `out`.  The date is $SOURCE_DATE_EPOCH's, or none, so that a build
 * always writes the same pages.
 * @return 0, 1 if `out` could not be written, 2 if there is no such
 * command (said on stderr). */
int mp_manpage_print(const char *command, FILE *out);
