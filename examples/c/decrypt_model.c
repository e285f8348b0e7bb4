/* Decrypts a protected ONNX model into memory with the onnx-protect C ABI.
 *
 *   decrypt_model MODEL (--key-file F | --key-env VAR | --passphrase-env VAR | --identity-file F)
 *                 [--licence L] [--tier T] [--signer S] [--compare ORIGINAL]
 *
 * Opens MODEL, verifies it (keyless digest, then every MAC the key allows), decrypts it
 * into memory and prints what it got. --compare checks that the decrypted bytes equal
 * the file ORIGINAL (and its external data files, found next to it by location).
 * A runtime takes the bytes from onnx_protect_model_data() (onnxruntime's C API:
 * CreateSessionFromArray; see docs/capi.md). No plaintext is written to a file system.
 *
 * Exit status: 0 on success, otherwise the OnnxProtectStatus of the failed call
 * (100 for a usage error, 101 for a --compare mismatch).
 *
 * Build: cc -I crates/capi/include examples/c/decrypt_model.c -L target/release -lonnx_protect
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "onnx_protect.h"

#define USAGE_ERROR 100
#define COMPARE_MISMATCH 101

static int fail(const char *what, OnnxProtectStatus status) {
    const char *msg = onnx_protect_last_error();
    fprintf(stderr, "decrypt_model: %s: %s [%s]\n", what, msg ? msg : "(no message)",
            onnx_protect_status_name((int32_t)status));
    return (int)status;
}

/* Reads a whole file into a new buffer; NULL on error (errno set). */
static unsigned char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    unsigned char *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n == cap) {
            size_t next = cap ? cap * 2 : 65536;
            unsigned char *grown = realloc(buf, next);
            if (!grown) { free(buf); fclose(f); errno = ENOMEM; return NULL; }
            buf = grown;
            cap = next;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) { free(buf); errno = EIO; return NULL; }
    *len = n;
    return buf;
}

/* 1 if `len` bytes at `data` equal the file at `path`. */
static int same_as_file(const unsigned char *data, size_t len, const char *path) {
    size_t n = 0;
    unsigned char *want = read_file(path, &n);
    if (!want) {
        fprintf(stderr, "decrypt_model: cannot read %s: %s\n", path, strerror(errno));
        return 0;
    }
    int same = n == len && memcmp(want, data, len) == 0;
    free(want);
    return same;
}

int main(int argc, char **argv) {
    const char *model_path = NULL, *key_file = NULL, *key_env = NULL, *pass_env = NULL;
    const char *identity_file = NULL, *compare = NULL, *signer = NULL, *licence = NULL;
    unsigned long tier = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--key-file") == 0 && v) { key_file = v; i++; }
        else if (strcmp(a, "--key-env") == 0 && v) { key_env = v; i++; }
        else if (strcmp(a, "--passphrase-env") == 0 && v) { pass_env = v; i++; }
        else if (strcmp(a, "--identity-file") == 0 && v) { identity_file = v; i++; }
        else if (strcmp(a, "--compare") == 0 && v) { compare = v; i++; }
        else if (strcmp(a, "--signer") == 0 && v) { signer = v; i++; }
        else if (strcmp(a, "--licence") == 0 && v) { licence = v; i++; }
        else if (strcmp(a, "--tier") == 0 && v) { tier = strtoul(v, NULL, 10); i++; }
        else if (a[0] != '-' && !model_path) { model_path = a; }
        else {
            fprintf(stderr, "decrypt_model: unexpected argument %s\n", a);
            return USAGE_ERROR;
        }
    }
    int keys = !!key_file + !!key_env + !!pass_env + !!identity_file;
    if (!model_path || keys != 1) {
        fprintf(stderr, "usage: decrypt_model MODEL (--key-file F | --key-env VAR | --passphrase-env VAR | "
                        "--identity-file F) [--licence L] [--tier T] [--signer S] [--compare ORIGINAL]\n");
        return USAGE_ERROR;
    }

    OnnxProtectKey *key = NULL;
    OnnxProtectStatus s;
    if (key_file) {
        s = onnx_protect_key_from_file(key_file, &key);
    } else if (key_env) {
        s = onnx_protect_key_from_env(key_env, &key);
    } else if (identity_file) {
        s = onnx_protect_key_from_identity_file(identity_file, &key);
    } else {
        const char *pass = getenv(pass_env);
        if (!pass) {
            fprintf(stderr, "decrypt_model: environment variable %s is not set\n", pass_env);
            return USAGE_ERROR;
        }
        s = onnx_protect_key_from_passphrase((const uint8_t *)pass, strlen(pass), &key);
    }
    if (s != ONNX_PROTECT_STATUS_OK) return fail("key", s);
    if (licence) {
        /* The same key with a licence, for a model encrypted with a licence authority. */
        OnnxProtectKey *licensed = NULL;
        s = onnx_protect_key_with_licence(key, licence, &licensed);
        onnx_protect_key_free(key);
        if (s != ONNX_PROTECT_STATUS_OK) return fail("licence", s);
        key = licensed;
    }

    OnnxProtectFile *file = NULL;
    s = onnx_protect_open(model_path, &file);
    if (s != ONNX_PROTECT_STATUS_OK) {
        onnx_protect_key_free(key);
        return fail("open", s);
    }
    printf("format %u, %u tier(s), %zu encrypted tensor(s), %llu encrypted bytes\n",
           onnx_protect_file_format_version(file), onnx_protect_file_tiers(file), onnx_protect_file_tensors(file),
           (unsigned long long)onnx_protect_file_encrypted_bytes(file));
    if (signer && (s = onnx_protect_file_trust_signer(file, signer)) != ONNX_PROTECT_STATUS_OK) {
        onnx_protect_file_free(file);
        onnx_protect_key_free(key);
        return fail("signer", s);
    }
    if ((s = onnx_protect_file_verify(file, NULL)) != ONNX_PROTECT_STATUS_OK ||
        (s = onnx_protect_file_verify(file, key)) != ONNX_PROTECT_STATUS_OK) {
        onnx_protect_file_free(file);
        onnx_protect_key_free(key);
        return fail("verify", s);
    }

    OnnxProtectModel *model = NULL;
    s = onnx_protect_file_decrypt(file, key, (uint32_t)tier, &model);
    onnx_protect_file_free(file);
    onnx_protect_key_free(key); /* zeroed */
    if (s != ONNX_PROTECT_STATUS_OK) return fail("decrypt", s);

    size_t len = 0;
    const uint8_t *bytes = onnx_protect_model_data(model, &len);
    size_t count = onnx_protect_model_external_count(model);
    printf("decrypted model: %zu bytes, %zu external data file(s)\n", len, count);
    int status = 0;
    if (compare && !same_as_file(bytes, len, compare)) {
        fprintf(stderr, "decrypt_model: the decrypted model differs from %s\n", compare);
        status = COMPARE_MISMATCH;
    }
    for (size_t i = 0; i < count && status == 0; i++) {
        const char *location = NULL;
        const uint8_t *data = NULL;
        size_t n = 0;
        if ((s = onnx_protect_model_external(model, i, &location, &data, &n)) != ONNX_PROTECT_STATUS_OK) {
            status = fail("external", s);
            break;
        }
        printf("external %s: %zu bytes\n", location, n);
        if (compare) {
            /* The original's external file: `location` next to ORIGINAL. */
            const char *slash = strrchr(compare, '/');
            size_t dir = slash ? (size_t)(slash - compare + 1) : 0;
            size_t need = dir + strlen(location) + 1;
            char *path = malloc(need);
            if (!path) { status = USAGE_ERROR; break; }
            memcpy(path, compare, dir);
            memcpy(path + dir, location, strlen(location) + 1);
            if (!same_as_file(data, n, path)) {
                fprintf(stderr, "decrypt_model: external file %s differs from %s\n", location, path);
                status = COMPARE_MISMATCH;
            }
            free(path);
        }
    }
    if (status == 0 && compare) printf("identical to %s\n", compare);
    onnx_protect_model_free(model); /* every decrypted byte is zeroed */
    return status;
}
