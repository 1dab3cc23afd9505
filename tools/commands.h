/*  commands: the subcommands of `loom`, one file each. Each takes the argv
    after the subcommand name (argv[0] is the subcommand) and returns the
    process exit status.  */

#ifndef LOOM_COMMANDS_H
#define LOOM_COMMANDS_H

int loom_cmd_broker(int argc, char **argv);  //  cmd_broker.c
int loom_cmd_worker(int argc, char **argv);  //  cmd_worker.c
int loom_cmd_map(int argc, char **argv);     //  cmd_map.c
int loom_cmd_status(int argc, char **argv);  //  cmd_status.c
int loom_cmd_plugin(int argc, char **argv);  //  cmd_plugin.c
int loom_cmd_keygen(int argc, char **argv);  //  cmd_keygen.c

#endif
