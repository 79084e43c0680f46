/* completion.h: bash completion, made from the commands' option tables. */
#pragma once

#include <stdio.h>

/* Writes the bash completion script for migproxy to `out`.
 * @return 0, or 1 if `out` could not be written. */
int mp_completion_print(FILE *out);
