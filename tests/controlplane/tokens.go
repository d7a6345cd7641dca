package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// holderLabel marks the Secrets the operator's tokens are bound to.
const holderLabel = "controlplane.dbgrant.io/operator-token-holder"

// expiresAnnotation on a holder Secret: when its token expires (Unix time).
const expiresAnnotation = "controlplane.dbgrant.io/token-expires"

// tokenRefresher keeps a file holding a bound ServiceAccount token for the
// operator, from the TokenRequest API, the way the kubelet keeps a pod's
// projected token: a new token once the current one is older than 80 % of
// its TTL (pkg/kubelet/token/token_manager.go, requiresRefresh), written
// atomically so a reader never sees half a token. kube-rs, like client-go,
// re-reads the file (every minute), so the operator picks each new token up
// without restarting.
//
// A pod's token is bound to the pod and dies with it. There are no pods
// here, so each token is bound to a Secret of its own (a TokenRequest
// boundObjectRef may name a Pod, a Secret or a Node): deleting that Secret
// revokes exactly that token, which is how the tests prove the operator has
// moved on to the new one. Holder Secrets of tokens that have expired are
// deleted at each refresh.
type tokenRefresher struct {
	client  kubernetes.Interface
	ns, sa  string
	path    string
	ttl     time.Duration
	refresh time.Duration // how often; 0: at 80 % of ttl
}

// ensureServiceAccount creates the operator's namespace and ServiceAccount
// if missing (the TokenRequest API needs the ServiceAccount object; a token
// is bound to its uid).
func (t *tokenRefresher) ensureServiceAccount(ctx context.Context) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: t.ns}}
	if _, err := t.client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating namespace %s: %w", t.ns, err)
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: t.sa, Namespace: t.ns}}
	if _, err := t.client.CoreV1().ServiceAccounts(t.ns).Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating ServiceAccount %s/%s: %w", t.ns, t.sa, err)
	}
	return nil
}

// interval between refreshes.
func (t *tokenRefresher) interval() time.Duration {
	if t.refresh > 0 {
		return t.refresh
	}
	return t.ttl * 8 / 10
}

// issue requests one token bound to a new holder Secret and writes it to
// the file.
func (t *tokenRefresher) issue(ctx context.Context) error {
	now := time.Now()
	holder := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			GenerateName: t.sa + "-token-",
			Namespace:    t.ns,
			Labels:       map[string]string{holderLabel: "true"},
			Annotations: map[string]string{
				expiresAnnotation: strconv.FormatInt(now.Add(t.ttl).Unix(), 10),
			},
		},
		Type: corev1.SecretTypeOpaque,
	}
	holder, err := t.client.CoreV1().Secrets(t.ns).Create(ctx, holder, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("creating the token's holder Secret: %w", err)
	}
	seconds := int64(t.ttl / time.Second)
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		ExpirationSeconds: &seconds,
		BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Secret", APIVersion: "v1", Name: holder.Name, UID: holder.UID},
	}}
	tr, err := t.client.CoreV1().ServiceAccounts(t.ns).CreateToken(ctx, t.sa, req, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("TokenRequest for %s/%s: %w", t.ns, t.sa, err)
	}
	tmp := t.path + ".tmp"
	if err := os.WriteFile(tmp, []byte(tr.Status.Token), 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, t.path); err != nil {
		return err
	}
	t.collect(ctx, now)
	return nil
}

// collect deletes the holder Secrets of tokens that have expired.
func (t *tokenRefresher) collect(ctx context.Context, now time.Time) {
	list, err := t.client.CoreV1().Secrets(t.ns).List(ctx, metav1.ListOptions{LabelSelector: holderLabel + "=true"})
	if err != nil {
		logf("listing operator token holders: %v", err)
		return
	}
	for _, s := range list.Items {
		exp, err := strconv.ParseInt(s.Annotations[expiresAnnotation], 10, 64)
		if err == nil && now.Unix() < exp {
			continue
		}
		if err := t.client.CoreV1().Secrets(t.ns).Delete(ctx, s.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			logf("deleting expired operator token holder %s: %v", s.Name, err)
		}
	}
}

// run refreshes the token until ctx ends; a failed refresh is retried
// every few seconds (the current token stays valid meanwhile).
func (t *tokenRefresher) run(ctx context.Context) {
	next := t.interval()
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(next):
		}
		if err := t.issue(ctx); err != nil {
			if ctx.Err() == nil {
				logf("refreshing the operator's token: %v", err)
			}
			next = 5 * time.Second
			continue
		}
		next = t.interval()
	}
}

// startOperatorTokens sets up the operator's ServiceAccount, writes its
// first token to <dir>/operator.token and keeps it fresh until ctx ends.
func startOperatorTokens(ctx context.Context, adminKubeconfig, dir, ns, sa string, ttl, refresh time.Duration) (string, error) {
	if ttl < 10*time.Minute {
		// the TokenRequest API refuses less: "may not specify a duration
		// less than 10 minutes"
		return "", fmt.Errorf("--operator-token-ttl %v is below the TokenRequest API's minimum of 10m", ttl)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", adminKubeconfig)
	if err != nil {
		return "", err
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return "", err
	}
	t := &tokenRefresher{client: client, ns: ns, sa: sa, path: filepath.Join(dir, "operator.token"), ttl: ttl, refresh: refresh}
	if err := t.ensureServiceAccount(ctx); err != nil {
		return "", err
	}
	if err := t.issue(ctx); err != nil {
		return "", err
	}
	go t.run(ctx)
	return t.path, nil
}
