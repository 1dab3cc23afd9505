/* placeholder */
typedef int loom_placeholder;
