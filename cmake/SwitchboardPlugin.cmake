# switchboard_add_plugin(NAME KIND [SOURCES src...] PLUGIN plugin.cpp [LIBS lib...])
#
# Builds one plugin. SOURCES form a small static library `switchboard_<KIND>_<NAME>_lib` that tests link
# directly; PLUGIN (the file with SWITCHBOARD_PLUGIN(...)) becomes the loadable module `<KIND>_<NAME>.so` in the
# plugin directory, built with hidden visibility so that only the descriptor is exported.
# A reload unloads a plugin's old library once its objects are gone. GCC marks function-local statics of inline
# functions (std::to_string has one) as STB_GNU_UNIQUE symbols, and glibc never unloads a library that has one, so
# plugin code is compiled without them: each plugin keeps its own copies, as hidden visibility means anyway.
function(switchboard_unloadable target)
  if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
    target_compile_options(${target} PRIVATE -fno-gnu-unique)
  endif()
endfunction()

function(switchboard_add_plugin name kind)
  cmake_parse_arguments(ARG "" "PLUGIN" "SOURCES;LIBS" ${ARGN})
  if(NOT ARG_PLUGIN)
    message(FATAL_ERROR "switchboard_add_plugin(${name}): PLUGIN plugin.cpp is required")
  endif()
  set(target "switchboard_${kind}_${name}")
  if(TARGET Switchboard::sdk)
    set(sdk Switchboard::sdk)
  else()
    set(sdk switchboard_sdk)
  endif()
  if(ARG_SOURCES)
    add_library(${target}_lib STATIC ${ARG_SOURCES})
    target_link_libraries(${target}_lib PUBLIC ${sdk} ${ARG_LIBS})
    target_include_directories(${target}_lib PUBLIC "${CMAKE_CURRENT_SOURCE_DIR}")
    set_target_properties(${target}_lib PROPERTIES
      POSITION_INDEPENDENT_CODE ON CXX_VISIBILITY_PRESET hidden VISIBILITY_INLINES_HIDDEN ON)
    switchboard_unloadable(${target}_lib)
    set(logic ${target}_lib)
  endif()
  add_library(${target} MODULE ${ARG_PLUGIN})
  target_link_libraries(${target} PRIVATE ${sdk} ${logic} ${ARG_LIBS})
  switchboard_unloadable(${target})
  if(NOT DEFINED SWITCHBOARD_PLUGIN_DIR)
    set(SWITCHBOARD_PLUGIN_DIR "${CMAKE_BINARY_DIR}/plugins")
  endif()
  set_target_properties(${target} PROPERTIES
    PREFIX "" OUTPUT_NAME "${kind}_${name}"
    CXX_VISIBILITY_PRESET hidden VISIBILITY_INLINES_HIDDEN ON
    LIBRARY_OUTPUT_DIRECTORY "${SWITCHBOARD_PLUGIN_DIR}")
  if(DEFINED SWITCHBOARD_INSTALL_PLUGIN_DIR)
    install(TARGETS ${target} LIBRARY DESTINATION "${SWITCHBOARD_INSTALL_PLUGIN_DIR}")
  endif()
endfunction()
