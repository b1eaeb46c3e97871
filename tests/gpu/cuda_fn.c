/* A GPU function for tests/gpu/run-on-gpu.sh: an FC custom-container HTTP server on
 * $FC_SERVER_PORT (9000) that holds 64 MiB of CUDA device memory filled with a pattern.
 * It needs no CUDA headers: the few driver API calls are declared here and libcuda.so.1 (which
 * the GPU's CDI spec or NVIDIA's hook mounts into the instance) is opened with dlopen.
 *   POST /invoke, body "check": copies the device memory back and answers "ok" if the pattern
 *     survived (across freezes and GPU hibernation), with the time the check took;
 *   POST /invoke, body "smi": answers `nvidia-smi -L`.
 * Build: cc -O2 -o cuda_fn cuda_fn.c -ldl */
#include <dlfcn.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef int CUresult;
typedef int CUdevice;
typedef void *CUcontext;
typedef unsigned long long CUdeviceptr;
static CUresult (*cuInit)(unsigned);
static CUresult (*cuDeviceGet)(CUdevice *, int);
static CUresult (*cuCtxCreate)(CUcontext *, unsigned, CUdevice);
static CUresult (*cuMemAlloc)(CUdeviceptr *, size_t);
static CUresult (*cuMemcpyHtoD)(CUdeviceptr, const void *, size_t);
static CUresult (*cuMemcpyDtoH)(void *, CUdeviceptr, size_t);

#define BYTES (64u << 20)
static CUdeviceptr dev;
static unsigned char *host;

static void die(const char *what, int r) { fprintf(stderr, "cuda_fn: %s failed (%d)\n", what, r); exit(1); }

static void cuda_setup(void) {
    void *lib = dlopen("libcuda.so.1", RTLD_NOW);
    if (!lib) { fprintf(stderr, "cuda_fn: %s\n", dlerror()); exit(1); }
#define SYM(v, name) (*(void **)&v = dlsym(lib, name)) || (die(name, -1), 0)
    SYM(cuInit, "cuInit"); SYM(cuDeviceGet, "cuDeviceGet"); SYM(cuCtxCreate, "cuCtxCreate_v2");
    SYM(cuMemAlloc, "cuMemAlloc_v2"); SYM(cuMemcpyHtoD, "cuMemcpyHtoD_v2"); SYM(cuMemcpyDtoH, "cuMemcpyDtoH_v2");
    CUdevice d; CUcontext c; int r;
    if ((r = cuInit(0))) die("cuInit", r);
    if ((r = cuDeviceGet(&d, 0))) die("cuDeviceGet", r);
    if ((r = cuCtxCreate(&c, 0, d))) die("cuCtxCreate", r);
    if ((r = cuMemAlloc(&dev, BYTES))) die("cuMemAlloc", r);
    host = malloc(BYTES);
    for (unsigned i = 0; i < BYTES; i++) host[i] = (unsigned char)(i * 7 + 3);
    if ((r = cuMemcpyHtoD(dev, host, BYTES))) die("cuMemcpyHtoD", r);
}

static double now_ms(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1e3 + t.tv_nsec / 1e6; }

static void answer(int fd, const char *body) {
    char head[256];
    int n = snprintf(head, sizeof head, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n\r\n", strlen(body));
    write(fd, head, n);
    write(fd, body, strlen(body));
}

int main(void) {
    cuda_setup();
    const char *p = getenv("FC_SERVER_PORT");
    int port = p ? atoi(p) : 9000, one = 1;
    int s = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_ANY)};
    if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 16)) { perror("cuda_fn: listen"); return 1; }
    static char req[1 << 16], out[8192];
    unsigned char *back = malloc(BYTES);
    for (;;) {
        int c = accept(s, 0, 0);
        if (c < 0) continue;
        for (;;) { /* kept-alive requests; one read per request is enough for these small ones */
            ssize_t n = read(c, req, sizeof req - 1);
            if (n <= 0) break;
            req[n] = 0;
            char *body = strstr(req, "\r\n\r\n");
            body = body ? body + 4 : "";
            if (!strncmp(body, "smi", 3)) {
                FILE *f = popen("nvidia-smi -L 2>&1", "r");
                size_t got = f ? fread(out, 1, sizeof out - 1, f) : 0;
                out[got] = 0;
                if (f) pclose(f);
                answer(c, out);
            } else {
                double t0 = now_ms();
                int r = cuMemcpyDtoH(back, dev, BYTES);
                int same = !r && !memcmp(back, host, BYTES);
                snprintf(out, sizeof out, "%s %.2f ms\n", same ? "ok" : "CORRUPT", now_ms() - t0);
                answer(c, out);
            }
        }
        close(c);
    }
}
