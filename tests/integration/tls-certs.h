/* tls-certs.h: certificates for the tunnel's TLS tests, made at run time
 * with openssl (the commands of docs/tunnel.md, "TLS"). */
#pragma once

/* Makes in `dir` (which the test removes):
 *   ca.pem, ca.key                 the CA both ends trust
 *   dest.pem, dest.key             signed by it, names IP 127.0.0.1 and
 *                                  localhost (serverAuth)
 *   source.pem, source.key         signed by it, names source.test
 *                                  (clientAuth)
 *   expired.pem, expired.key       like source, expired yesterday
 *   other/ca.pem                   another CA
 *   other/source.pem, .key         signed by the other CA
 * Asserts that openssl succeeded. */
void it_make_certs(const char *dir);
