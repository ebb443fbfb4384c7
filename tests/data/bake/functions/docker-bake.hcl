# User functions and the standard library buildx offers.
variable "BRANCH" {
  default = "Feature/Login-Page"
}
variable "VERSION" {
  default = "v1.2.3-rc.1"
}

function "slug" {
  params = [s]
  result = lower(regex_replace(s, "[^A-Za-z0-9]+", "-"))
}

function "image" {
  params          = [name]
  variadic_params = tags
  result          = [for t in tags : "registry.example.com/${name}:${t}"]
}

function "major" {
  params = [v]
  result = element(split(".", trimprefix(v, "v")), 0)
}

group "default" {
  targets = ["app"]
}

target "app" {
  context = "app"
  tags    = image("app", slug(BRANCH), major(VERSION), "latest")
  args = {
    JOIN        = join("-", ["a", "b"], ["c"])
    UPPER       = upper("abc")
    REPLACE     = replace("a.b.c", ".", "/")
    FORMAT      = format("%s-%03d-%.1f-%t", "x", 7, 2.25, true)
    FORMATLIST  = join(",", formatlist("<%s>", ["a", "b"]))
    DATE        = formatdate("YYYY-MM-DD'T'hh:mm ZZZ EEE MMM", "2024-02-29T13:04:05Z")
    TIMEADD     = timeadd("2024-02-28T23:00:00Z", "1h30m")
    COALESCE    = coalesce(null, "first", "second")
    CONCAT      = length(concat(["a"], ["b", "c"]))
    CONTAINS    = contains(["a", "b"], "b")
    LENGTH      = strlen("héllo")
    TRIMSUFFIX  = trimsuffix("app.tar.gz", ".gz")
    SUBSTR      = substr("hello world", 6, -1)
    ELEMENT     = element(["a", "b", "c"], 4)
    DISTINCT    = join(",", distinct(["a", "b", "a"]))
    FLATTEN     = join(",", flatten([["a"], [["b"]], "c"]))
    MERGED_KEYS = join(",", keys(merge({ a = 1 }, { b = 2 })))
    VALUES      = join(",", values({ x = "1", y = "2" }))
    LOOKUP      = lookup({ a = "A" }, "b", "default")
    EQUAL       = equal(1, 1)
    NOTEQUAL    = notequal("", BRANCH)
    AND_OR      = or(and(true, false), true)
    SANITIZE    = sanitize("a/b.c")
    BASENAME    = basename("/x/y/z.txt")
    DIRNAME     = dirname("/x/y/z.txt")
    SPLIT       = length(split(",", "a,b,,c"))
    REGEX       = regex("([0-9]+)\\.([0-9]+)", VERSION)[1]
    TITLE       = title("hello world")
    TRIMSPACE   = trimspace("  x  ")
    MAXMIN      = "${max(1, 5, 3)}-${min(4, 2)}"
    ARITH       = "${(7 + 3) * 2 / 4 % 3}"
    CONDITIONAL = VERSION != "" ? "set" : "unset"
    JSON        = jsonencode({ a = [1, "b"] })
    SORT        = join(",", sort(["b", "a", "c"]))
    RANGE       = join(",", range(1, 7, 2))
    SETUNION    = join(",", setunion(["b"], ["a", "b"]))
    ZIPMAP      = zipmap(["k"], ["v"])["k"]
    INDEXOF     = indexof(["x", "y"], "y")
    HEREDOC     = <<-EOT
      line one
        line two ${upper("x")}
      EOT
    TEMPLATE    = "%{ for i, v in ["a", "b"] }${i}=${v};%{ endfor }%{ if BRANCH != "" }yes%{ else }no%{ endif }"
    STRIP       = "a  %{~ if true ~}  b  %{~ endif ~}  c"
    TRY         = try(lookup({}, "missing"), "fallback")
    CAN         = can(regex("^v", VERSION))
  }
}
