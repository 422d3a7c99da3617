/* What a CUDA program does first: load the driver library by SONAME and call cuInit.
 * Prints "cuInit=<code>"; exit 0 only when the driver answered CUDA_SUCCESS (0). */
#include <dlfcn.h>
#include <stdio.h>

int main(void) {
    void *h = dlopen("libcuda.so.1", RTLD_NOW);
    if (!h) { printf("dlopen failed: %s\n", dlerror()); return 2; }
    int (*cu_init)(unsigned) = (int (*)(unsigned))dlsym(h, "cuInit");
    if (!cu_init) { printf("no cuInit\n"); return 3; }
    int r = cu_init(0);
    printf("cuInit=%d\n", r);
    return r == 0 ? 0 : 1;
}
