// Tests charts/dbgrant/files/argocd-health.lua under gopher-lua, the Lua engine Argo CD
// embeds (the version Argo CD v3 pins), the way Argo CD runs health scripts.
module dbgrant.io/tests/health

go 1.26.0

require github.com/yuin/gopher-lua v1.1.1
