/* tls-certs.c: the tunnel tests' certificates (see tls-certs.h). */
#include "config.h"
#include <glib.h>
#include <criterion/criterion.h>
#include "tls-certs.h"

/* The docs' commands (docs/tunnel.md, "TLS"), with P-256 keys (fast to
 * make) and short lives. */
static const char script[] =
    "set -e\n"
    "ca() {\n"
    "  openssl req -x509 -new -noenc -newkey ec"
    " -pkeyopt ec_paramgen_curve:P-256 -keyout $1/ca.key -out $1/ca.pem"
    " -days 2 -subj \"/CN=migproxy test CA\""
    " -addext basicConstraints=critical,CA:TRUE"
    " -addext keyUsage=critical,keyCertSign,cRLSign\n"
    "}\n"
    "leaf() { # CA-DIR NAME DAYS SAN EKU\n"
    "  printf 'subjectAltName=%s\\nextendedKeyUsage=%s\\n' \"$4\" \"$5\""
    " > $2.ext\n"
    "  openssl req -new -noenc -newkey ec -pkeyopt ec_paramgen_curve:P-256"
    " -keyout $2.key -out $2.csr -subj \"/CN=$(basename $2)\"\n"
    "  openssl x509 -req -in $2.csr -CA $1/ca.pem -CAkey $1/ca.key"
    " -set_serial 0x$(openssl rand -hex 8) -days $3 -extfile $2.ext"
    " -out $2.pem\n"
    "}\n"
    "mkdir -p other\n"
    "ca .\n"
    "ca other\n"
    "leaf . dest 2 IP:127.0.0.1,DNS:localhost serverAuth\n"
    "leaf . source 2 DNS:source.test clientAuth\n"
    "leaf . expired -1 DNS:source.test clientAuth\n"
    "leaf other other/source 2 DNS:source.test clientAuth\n";

void
it_make_certs(const char *dir)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *out = NULL;
    int status = -1;
    const char *argv[] = {"/bin/sh", "-c", script, NULL};

    gboolean ok =
        g_spawn_sync(dir, (char **)argv, NULL, G_SPAWN_STDOUT_TO_DEV_NULL, NULL,
                     NULL, NULL, &out, &status, &err);
    cr_assert(ok, "openssl: %s", err ? err->message : "?");
    cr_assert(g_spawn_check_wait_status(status, NULL),
              "making the certificates failed:\n%s", out);
}
