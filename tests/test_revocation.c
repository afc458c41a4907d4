/* test_revocation: the token revocation record (host/revocation.c) — parsing the Redis value
 * the user service writes, and which tokens a record refuses or gives another role. */
#include "revocation.h"
#include "test.h"

TEST(parses_the_user_services_record)
{
    revocation_t r;
    const char *v = "1764770000 1764770100 seller";
    CHECK_INT(revocation_parse(v, strlen(v), &r), 0);
    CHECK_INT(r.revoked_s, 1764770000);
    CHECK_INT(r.role_s, 1764770100);
    CHECK_STR(r.role, "seller");
    v = "0 0 -";
    CHECK_INT(revocation_parse(v, strlen(v), &r), 0);
    CHECK_STR(r.role, "");
}

TEST(refuses_malformed_records)
{
    revocation_t r;
    const char *bad[] = { "", "1", "1 2", "1 2 seller extra", "-1 2 buyer", "x 2 buyer", "1 2 averyveryverylongrole",
                          "1 2 buyer\n", "1 2 Admin", "99999999999999 2 buyer", "1  2 buyer", "1 2 " };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK_INT(revocation_parse(bad[i], strlen(bad[i]), &r), -1);
        CHECK(r.revoked_s == 0 && r.role_s == 0 && r.role[0] == 0);   /* a malformed record is none */
    }
    char big[200];
    memset(big, '1', sizeof big);
    CHECK_INT(revocation_parse(big, sizeof big, &r), -1);
}

TEST(refuses_tokens_issued_before_the_revocation)
{
    revocation_t r = { .revoked_s = 1000, .role_s = 0, .role = "" };
    const char *role = "x";
    CHECK_INT(revocation_refuses(&r, 999, &role), 1);
    CHECK_INT(revocation_refuses(&r, 999.999, &role), 1);
    CHECK_INT(revocation_refuses(&r, 0, &role), 1);          /* no iat: older than anything */
    CHECK_INT(revocation_refuses(&r, 0.0 / 0.0, &role), 1);  /* NaN */
    CHECK_INT(revocation_refuses(&r, 1000, &role), 0);
    CHECK(role == NULL);
}

TEST(gives_older_tokens_the_current_role)
{
    revocation_t r = { .revoked_s = 0, .role_s = 2000, .role = "buyer" };
    const char *role = NULL;
    CHECK_INT(revocation_refuses(&r, 1999, &role), 0);
    CHECK_STR(role, "buyer");
    CHECK_INT(revocation_refuses(&r, 2000, &role), 0);
    CHECK(role == NULL);
    revocation_t none = { 0 };
    CHECK_INT(revocation_refuses(&none, 5, &role), 0);
    CHECK(role == NULL);
}

int main(void)
{
    RUN(parses_the_user_services_record);
    RUN(refuses_malformed_records);
    RUN(refuses_tokens_issued_before_the_revocation);
    RUN(gives_older_tokens_the_current_role);
    return test_done();
}
