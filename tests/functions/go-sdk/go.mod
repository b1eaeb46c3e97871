module example.com/fcsup-go-sdk-fixture

go 1.19

require github.com/aliyun/fc-runtime-go-sdk v0.0.0

// No module proxy is reachable offline: ./sdk is fcsup's own minimal stand-in for aliyun's
// SDK (same package paths and API, same wire protocol); main.go is unchanged SDK-style code.
replace github.com/aliyun/fc-runtime-go-sdk => ./sdk
