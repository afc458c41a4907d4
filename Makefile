# mercato — one C binary hosting the services' Lua.
#
#   make            build build/mercato (-O2, warnings are errors)
#   make test       install what is missing, start the private stack, run every suite
#   make run        start the stack and every service plus the gateway (Ctrl-C stops all)
#   make bench      side-by-side benchmarks against nginx + Lua and Express
#   make lint       cppcheck + clang-tidy on C, luacheck on Lua, shellcheck on scripts
#   make asan       the test build under AddressSanitizer + UBSan (build/asan/mercato)
#   make valgrind   start/serve/stop under valgrind, failing on a leak
#   make coverage   C (gcov/lcov) and Lua line coverage reports under build/coverage
#   make security   the thorough sqlmap scan (level 5, risk 3, every technique) of every service
#   make chaos      the chaos tier: CHAOS_ROUNDS (50) seeded rounds of SIGKILLs under load
#
# Variables: CC, V=1 for full command lines, BUILD (default build).

CC       ?= cc
BUILD    ?= build
JOBS     ?= $(shell nproc 2>/dev/null || echo 2)
PKGS     := luajit libpq hiredis librabbitmq libcurl libjwt openssl libargon2
# The C tests' stand-in servers only (tests/test_http.c and others); the host serves HTTP itself.
TEST_PKGS := libmicrohttpd
VERSION  := $(shell git describe --always --dirty 2>/dev/null || echo dev)

PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

OPT      ?= -O2
CFLAGS   := $(OPT) -g -std=gnu11 -Wall -Wextra -Werror -Wno-unused-parameter -fno-strict-aliasing \
            -D_GNU_SOURCE -DMERCATO_VERSION='"$(VERSION)"' -I$(BUILD)/gen -Ihost $(PKG_CFLAGS) $(EXTRA_CFLAGS)
LDFLAGS  := -pthread -Wl,--dynamic-list=host/ffi.syms $(EXTRA_LDFLAGS)
LDLIBS   := $(PKG_LIBS) -lm
TEST_CFLAGS := $(shell pkg-config --cflags $(TEST_PKGS) 2>/dev/null)
TEST_LIBS   := $(shell pkg-config --libs $(TEST_PKGS) 2>/dev/null)

ifeq ($(V),1)
Q :=
else
Q := @
endif

HOST_SRC    := $(filter-out host/main.c,$(wildcard host/*.c)) $(wildcard bindings/*.c) $(wildcard core/*.c)
HOST_OBJ    := $(HOST_SRC:%.c=$(BUILD)/obj/%.o)
MAIN_OBJ    := $(BUILD)/obj/host/main.o
LIB         := $(BUILD)/libmercato.a
TEST_SRC    := $(wildcard tests/test_*.c)
TEST_BIN    := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
GEN         := $(BUILD)/gen/prelude.h $(BUILD)/gen/db_lua.h $(BUILD)/gen/inventory_lua.h $(BUILD)/gen/stripe_lua.h

.PHONY: all test test-unit test-spec run bench lint asan valgrind coverage clean deps stack-up stack-down
all: $(BUILD)/mercato $(TEST_BIN)

$(BUILD)/gen/prelude.h: host/lua/prelude.lua
	@mkdir -p $(@D)
	@echo "  LUAJIT  $<"
	$(Q)luajit -bg -n prelude -t h $< $@

# Generated headers are kept (a pattern rule's output would otherwise be deleted as intermediate).
.SECONDARY: $(GEN)
$(BUILD)/gen/%_lua.h: bindings/lua/%.lua
	@mkdir -p $(@D)
	@echo "  LUAJIT  $<"
	$(Q)luajit -bg -n $* -t h $< $@

$(BUILD)/obj/%.o: %.c | $(GEN)
	@mkdir -p $(@D)
	@echo "  CC      $<"
	$(Q)$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(LIB): $(HOST_OBJ)
	@echo "  AR      $@"
	$(Q)rm -f $@ && ar rcs $@ $^

$(BUILD)/mercato: $(MAIN_OBJ) $(LIB)
	@echo "  LINK    $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $(MAIN_OBJ) $(LIB) $(LDLIBS)

$(BUILD)/tests/%: tests/%.c tests/test.h $(LIB)
	@mkdir -p $(@D)
	@echo "  TEST    $@"
	$(Q)$(CC) $(CFLAGS) $(TEST_CFLAGS) -Itests -o $@ $< $(LIB) $(LDFLAGS) $(LDLIBS) $(TEST_LIBS)

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)

# ---- tiers ------------------------------------------------------------------------------
deps:
	@scripts/dev/install-deps.sh

test: deps
	@$(MAKE) --no-print-directory -j$(JOBS) all
	@scripts/dev/test.sh

test-unit: all
	@scripts/dev/test.sh unit

test-spec: all
	@scripts/dev/test.sh spec

.PHONY: test-deploy
test-deploy: deps
	@$(MAKE) --no-print-directory all
	@scripts/dev/test.sh deploy

# The chaos tier: CHAOS_ROUNDS (50) seeded rounds of SIGKILLs under a purchase load (spec/chaos/).
.PHONY: chaos
chaos: all
	@scripts/dev/test.sh chaos

# make run needs the binary and the stack's tools, not helm or the C tests.
run:
	@SKIP_HELM=1 scripts/dev/install-deps.sh
	@$(MAKE) --no-print-directory -j$(JOBS) $(BUILD)/mercato
	@scripts/dev/run.sh

bench: deps
	@$(MAKE) --no-print-directory all
	@MERCATO=$(BUILD)/mercato BENCH_REQUIRE_MERCATO=1 bash bench/run.sh

stack-up:
	@scripts/dev/stack.sh up

stack-down:
	@scripts/dev/stack.sh down

asan:
	@$(MAKE) --no-print-directory BUILD=build/asan OPT=-O1 \
	  EXTRA_CFLAGS="-fsanitize=address,undefined,float-cast-overflow -fno-omit-frame-pointer -fno-sanitize-recover=undefined,float-cast-overflow" \
	  EXTRA_LDFLAGS="-fsanitize=address,undefined,float-cast-overflow" all

valgrind: all
	@scripts/dev/valgrind.sh

coverage: deps
	@scripts/dev/coverage.sh

.PHONY: security
security: deps
	@$(MAKE) --no-print-directory all
	@scripts/dev/security.sh

lint:
	@scripts/dev/lint.sh

clean:
	rm -rf $(BUILD)

# ---- fuzzing (libFuzzer) ------------------------------------------------------------------
# make fuzz            every tests/fuzz/fuzz_*.c target for FUZZ_SECONDS (default 1800) each,
#                      one after the other, on its corpus under tests/fuzz/corpus/<target>/
#                      (FUZZ_CPU_SECONDS=N: a budget of N seconds of each target's own CPU)
# make fuzz-build      only build them (build/fuzz/fuzz/<target>; clang, ASan + UBSan)
# The library is rebuilt with clang under BUILD=build/fuzz so that the code under test carries
# the fuzzer's coverage instrumentation; scripts/dev/fuzz.sh runs the targets.
FUZZ_SECONDS ?= 1800
FUZZ_SRC     := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_FLAGS   := -fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
.PHONY: fuzz fuzz-build fuzz-targets
fuzz-build:
	@$(MAKE) --no-print-directory BUILD=build/fuzz CC=clang OPT=-O1 EXTRA_CFLAGS="$(FUZZ_FLAGS)" \
	  EXTRA_LDFLAGS="-fsanitize=fuzzer,address,undefined" fuzz-targets

fuzz-targets: $(FUZZ_SRC:tests/fuzz/%.c=$(BUILD)/fuzz/%)

$(BUILD)/fuzz/%: tests/fuzz/%.c tests/fuzz/fuzz.h tests/fuzz/fuzz_lua.h $(LIB)
	@mkdir -p $(@D)
	@echo "  FUZZ    $@"
	$(Q)$(CC) $(CFLAGS) -Itests/fuzz -o $@ $< $(LIB) $(LDFLAGS) $(LDLIBS)

fuzz: fuzz-build
	@FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/dev/fuzz.sh
