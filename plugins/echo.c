#include <loom/plugin.h>
static const loom_task_def s_tasks[] = {{0}};
LOOM_PLUGIN(.name = "echo", .version = "0.0.0", .tasks = s_tasks);
