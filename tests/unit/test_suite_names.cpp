// The test suite's own hygiene: every test case must be runnable one by one through CTest.
#include <catch2/catch.hpp>

#include <string>

TEST_CASE("suite: no test case name contains a semicolon (CTest would never run it)", "[suite]") {
    // catch_discover_tests passes names through a CMake list, which splits them at ';': each half became
    // a CTest test whose filter matched nothing and passed, and the real test never ran in CI.
    for (const auto & tc : Catch::getRegistryHub().getTestCaseRegistry().getAllTests()) {
        INFO(tc.name);
        CHECK(tc.name.find(';') == std::string::npos);
    }
}
