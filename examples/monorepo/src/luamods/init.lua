local M = {}
M.version = "1.0"
return M
