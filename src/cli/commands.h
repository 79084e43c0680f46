/* commands.h: the subcommands of the migproxy binary. */
#pragma once

/* Each returns the process exit status: 0 ok, 1 failure, 2 usage. */
int mp_cmd_analyze(int argc, char **argv);
int mp_cmd_demo(int argc, char **argv);
int mp_cmd_relay(int argc, char **argv);
