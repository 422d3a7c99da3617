/* What a HIP program does first: load the HIP runtime by SONAME and call hipInit.
 * Prints "hipInit=<code>"; exit 0 only when the runtime answered hipSuccess (0). */
#include <dlfcn.h>
#include <stdio.h>

int main(void) {
    void *h = dlopen("libamdhip64.so.6", RTLD_NOW);
    if (!h) { printf("dlopen failed: %s\n", dlerror()); return 2; }
    int (*hip_init)(unsigned) = (int (*)(unsigned))dlsym(h, "hipInit");
    if (!hip_init) { printf("no hipInit\n"); return 3; }
    int r = hip_init(0);
    printf("hipInit=%d\n", r);
    return r == 0 ? 0 : 1;
}
