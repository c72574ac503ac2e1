# The R side of the agent's end-marker protocol (sandbox_agent/repl.py, DriverRepl).
# stdin lines: "run TOKEN PATH" parses the file PATH and evaluates each expression in the global
# environment (state persists, as in the R console); visible values print as the console prints them,
# the last one is the result instead. "env HEXKEY HEXVALUE" sets the environment. After a run, stdout
# gets TOKEN + {"result"} or {"error"} or {}, stderr gets TOKEN. Warnings print as they happen.
options(warn = 1)
local({
  json_str <- function(s) {
    s <- enc2utf8(paste(s, collapse = "\n"))
    for (p in list(c("\\", "\\\\"), c("\"", "\\\""), c("\n", "\\n"), c("\r", "\\r"), c("\t", "\\t"))) {
      s <- gsub(p[1], p[2], s, fixed = TRUE)
    }
    paste0("\"", gsub("[[:cntrl:]]", " ", s), "\"")
  }
  error_of <- function(name, value, trace) {
    sprintf("{\"error\":{\"name\":%s,\"value\":%s,\"traceback\":[%s]}}", json_str(name), json_str(value),
            paste(vapply(trace, json_str, ""), collapse = ","))
  }
  unhex <- function(hex) {
    if (nchar(hex) == 0) return("")
    rawToChar(as.raw(strtoi(substring(hex, seq(1, nchar(hex), 2), seq(2, nchar(hex), 2)), 16L)))
  }
  run <- function(path) {
    exprs <- tryCatch(
      parse(text = readLines(path, encoding = "UTF-8", warn = FALSE), keep.source = FALSE),
      error = function(e) stop(structure(class = c("parseError", "error", "condition"),
                                         list(message = conditionMessage(e), call = NULL))))
    outcome <- "{}"
    for (i in seq_along(exprs)) {
      shown <- withVisible(eval(exprs[[i]], globalenv()))
      if (!shown$visible) next
      if (i < length(exprs)) print(shown$value)
      else outcome <- sprintf("{\"result\":%s}", json_str(utils::capture.output(print(shown$value))))
    }
    outcome
  }
  stdin <- file("stdin", open = "r")
  repeat {
    # An interrupt that arrives between executions is dropped, not left to end the driver.
    line <- tryCatch(readLines(stdin, n = 1), interrupt = function(e) NA_character_)
    if (length(line) == 0) break
    if (is.na(line)) next
    parts <- strsplit(line, " ", fixed = TRUE)[[1]]
    if (parts[1] == "env") {
      do.call(Sys.setenv, stats::setNames(list(unhex(if (length(parts) > 2) parts[3] else "")), unhex(parts[2])))
      next
    }
    outcome <- tryCatch(run(parts[3]),
      error = function(e) {
        call <- conditionCall(e)
        own <- is.null(call) || identical(call[[1]], quote(eval))  # the driver's eval: no call to show
        error_of(class(e)[1], conditionMessage(e), if (own) character() else deparse(call))
      },
      interrupt = function(e) error_of("interrupt", "interrupted", character()))
    cat(parts[2], outcome, "\n", sep = "", file = stdout())
    flush(stdout())
    cat(parts[2], "\n", sep = "", file = stderr())
    flush(stderr())
  }
})
