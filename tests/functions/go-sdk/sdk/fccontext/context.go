// Package fccontext is fcsup's minimal stand-in for the package of the same path in aliyun's
// fc-runtime-go-sdk: the same exported names the fixture uses, written for fcsup's tests (the
// SDK itself is not vendored).
package fccontext

import (
	"context"
	"fmt"
	"log"
	"time"
)

type Credentials struct {
	AccessKeyId     string
	AccessKeySecret string
	SecurityToken   string
}

type Function struct {
	Name    string
	Handler string
	Memory  string
	Timeout int
}

type Service struct {
	Name       string
	LogProject string
	LogStore   string
	Qualifier  string
	VersionId  string
}

type FcContext struct {
	RequestID   string
	Credentials Credentials
	Function    Function
	Service     Service
	Region      string
	AccountId   string
	RetryCount  int

	logger *FcLogger
}

type key struct{}

func NewContext(parent context.Context, fc *FcContext) context.Context {
	return context.WithValue(parent, key{}, fc)
}

func FromContext(ctx context.Context) (*FcContext, bool) {
	fc, ok := ctx.Value(key{}).(*FcContext)
	if !ok {
		return nil, false
	}
	fc.logger = NewFcLogger(fc.RequestID)
	return fc, true
}

func (f *FcContext) GetLogger() *FcLogger { return f.logger }

// FcLogger writes `<UTC time> <request id> [LEVEL] file:line: message`, the SDK's line.
type FcLogger struct{ rid string }

func NewFcLogger(requestID string) *FcLogger { return &FcLogger{requestID} }

type levelWriter struct{ rid, level string }

func (w levelWriter) Write(b []byte) (int, error) {
	return fmt.Print(time.Now().UTC().Format("2006-01-02T15:04:05.999Z") + " " + w.rid + " [" + w.level + "] " + string(b))
}

func (l *FcLogger) out(level, msg string) {
	_ = log.New(levelWriter{l.rid, level}, "", log.Lshortfile).Output(3, msg)
}

func (l *FcLogger) Debug(v ...interface{})                 { l.out("DEBUG", fmt.Sprintln(v...)) }
func (l *FcLogger) Debugf(format string, v ...interface{}) { l.out("DEBUG", fmt.Sprintf(format, v...)) }
func (l *FcLogger) Info(v ...interface{})                  { l.out("INFO", fmt.Sprintln(v...)) }
func (l *FcLogger) Infof(format string, v ...interface{})  { l.out("INFO", fmt.Sprintf(format, v...)) }
func (l *FcLogger) Warn(v ...interface{})                  { l.out("WARN", fmt.Sprintln(v...)) }
func (l *FcLogger) Warnf(format string, v ...interface{})  { l.out("WARN", fmt.Sprintf(format, v...)) }
func (l *FcLogger) Error(v ...interface{})                 { l.out("ERROR", fmt.Sprintln(v...)) }
func (l *FcLogger) Errorf(format string, v ...interface{}) { l.out("ERROR", fmt.Sprintf(format, v...)) }
