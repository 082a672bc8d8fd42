# What every addon built on tensor-core's SDK shares (the engine's, the reference solutions', a week package's):
# include() it from the addon's CMakeLists.txt, then tiny_llm_addon(<name> <sources...>) builds <name>.node.
#
# Built for the baseline ISA (never -march=native: a cached .node from another CPU would die with SIGILL); SIMD
# kernels are compiled with __attribute__((target(...))) and chosen at run time.
set(CMAKE_CXX_STANDARD 17)
set(CMAKE_CXX_STANDARD_REQUIRED ON)
if(NOT CMAKE_BUILD_TYPE)
  set(CMAKE_BUILD_TYPE Release)
endif()
set(CMAKE_CXX_FLAGS_RELEASE "-O3")
add_definitions(-DNAPI_VERSION=8 -DNODE_ADDON_API_DISABLE_DEPRECATED)

execute_process(COMMAND node -p "require('node-addon-api').include"
  WORKING_DIRECTORY ${CMAKE_SOURCE_DIR} OUTPUT_VARIABLE NODE_ADDON_API_DIR OUTPUT_STRIP_TRAILING_WHITESPACE)
string(REPLACE "\"" "" NODE_ADDON_API_DIR ${NODE_ADDON_API_DIR})

# The SDK headers (tiny_llm/extension.h, tiny_llm/simd.h) are all an addon sees of tensor-core.
set(TINY_LLM_SDK_INCLUDE ${CMAKE_CURRENT_LIST_DIR}/../include)

function(tiny_llm_addon name)
  add_library(${name} SHARED ${ARGN} ${CMAKE_JS_SRC})
  set_target_properties(${name} PROPERTIES PREFIX "" SUFFIX ".node")
  target_include_directories(${name} PRIVATE ${CMAKE_JS_INC} ${NODE_ADDON_API_DIR} ${TINY_LLM_SDK_INCLUDE})
  target_link_libraries(${name} PRIVATE ${CMAKE_JS_LIB} pthread)
  target_compile_options(${name} PRIVATE -Wall -Wno-unused-function -fno-math-errno)
endfunction()
