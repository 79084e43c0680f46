/* main.c: migproxy entry point; subcommand dispatch. */
#include "config.h"
#include <stdio.h>
#include <string.h>
#include <glib.h>

int
main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--version") == 0) {
        printf("migproxy %s\n", MP_VERSION);
        return 0;
    }
    fprintf(stderr, "usage: migproxy COMMAND [OPTIONS]\n");
    return 2;
}
