// A Go function written against aliyun's fc-runtime-go-sdk API (fc.Start, the lifecycle
// registrations, fccontext.FromContext), for tests/runtime_api.rs.
package main

import (
	"context"
	"fmt"

	"github.com/aliyun/fc-runtime-go-sdk/fc"
	"github.com/aliyun/fc-runtime-go-sdk/fccontext"
)

type Event struct {
	Name string `json:"name"`
}

var initRequest string

func initialize(ctx context.Context) {
	fctx, _ := fccontext.FromContext(ctx)
	initRequest = fctx.RequestID
	fctx.GetLogger().Infof("initialize %s", fctx.RequestID)
}

func preStop(ctx context.Context) {
	fctx, _ := fccontext.FromContext(ctx)
	fmt.Println("preStop ran for", fctx.RequestID)
}

func handle(ctx context.Context, ev Event) (map[string]interface{}, error) {
	fctx, _ := fccontext.FromContext(ctx)
	if ev.Name == "fail" {
		return nil, fmt.Errorf("cannot greet %q", ev.Name)
	}
	if ev.Name == "panic" {
		panic("go handler panicked")
	}
	fctx.GetLogger().Info("hello from go")
	deadline, _ := ctx.Deadline()
	return map[string]interface{}{
		"greeting":      "hello " + ev.Name,
		"request_id":    fctx.RequestID,
		"function":      fctx.Function.Name,
		"memory":        fctx.Function.Memory,
		"timeout":       fctx.Function.Timeout,
		"region":        fctx.Region,
		"account_id":    fctx.AccountId,
		"access_key_id": fctx.Credentials.AccessKeyId,
		"init_request":  initRequest,
		"deadline_ms":   deadline.UnixMilli(),
	}, nil
}

func main() {
	fc.RegisterInitializerFunction(initialize)
	fc.RegisterPreStopFunction(preStop)
	fc.Start(handle)
}
